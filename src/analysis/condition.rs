//! Success and failure conditions: CEL expressions over `result`.
//!
//! `result` is a double for a scalar query and a list of doubles for a vector, so Argo-style
//! conditions such as `result[0] >= 0.95` read the same. Besides CEL's standard functions,
//! conditions may use `isNaN(x)`, `isInf(x)` and `default(x, fallback)` (the fallback when `x`
//! is missing, NaN, infinite, or cannot be evaluated — e.g. `default(result[0], 0)` on an empty
//! vector).
//!
//! The CEL crate has no static type checker, so [`Condition::compile`] checks what can be
//! checked without data (syntax, that `result` is the only variable, that every function exists)
//! and then evaluates the condition on sample results, requiring a boolean for at least one
//! shape of result: that catches type errors such as comparing a list with a number.
//!
//! Nor does it bound what an evaluation costs, so conditions are cost-limited as Kubernetes
//! limits CEL validation rules: [`Condition::estimated_cost`] estimates the worst case from
//! the expression and the number of series in `result`; [`Condition::compile`] refuses a
//! condition whose estimate for [`RESULT_SERIES_BOUND`] series exceeds [`COST_LIMIT`], and
//! [`Condition::evaluate`] refuses to evaluate one whose estimate for the actual result does.

use std::sync::Arc;
use std::time::Duration;

use cel::common::ast::{ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::Value;
use cel::parser::Expression;
use cel::{Context, ExecutionError, FunctionContext, Program, ResolveResult};

/// Functions a condition may call: CEL's standard library (as the `cel` crate provides it)
/// and ours.
const KNOWN_FUNCTIONS: [&str; 28] = [
    "asInt",
    "asFloat",
    "contains",
    "size",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "duration",
    "timestamp",
    "or",
    "orValue",
    "hasValue",
    "isNaN",
    "isInf",
    "default",
];

/// The most a condition may cost to evaluate, in the units of [`Condition::estimated_cost`]
/// (about one per expression node evaluated or list element touched): Kubernetes' limit on
/// the estimated cost of one CEL validation rule (`StaticEstimatedCostLimit`).
pub const COST_LIMIT: u64 = 10_000_000;

/// How many series a condition is checked for when it is compiled: an accepted condition is
/// evaluated within [`COST_LIMIT`] for any result up to this size, and for larger results
/// whenever its estimate for their size is within the limit too (`result[0] >= 0.95` costs
/// the same for any size; `result.all(x, x < 0.01)` grows with it).
pub const RESULT_SERIES_BOUND: u64 = 1_000;

/// How long judging one measurement may take. Within [`COST_LIMIT`] an evaluation takes far
/// less; this bounds what the estimate could miss, so a slow condition becomes an `Error`
/// measurement instead of a stalled controller.
pub const EVALUATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The value a query produced, as a condition sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum ResultValue {
    Scalar(f64),
    Vector(Vec<f64>),
    /// A JSON answer (web provider): numbers are doubles, objects are maps, so Argo's
    /// `result.ok && result.successPercent >= 0.90` reads the same.
    Json(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("`{source_text}` is not valid CEL: {message}")]
    Syntax {
        source_text: String,
        message: String,
    },
    #[error(
        "`{source_text}` uses the variable {variable:?}: conditions can only see `result` (a number, or a list of numbers for a vector query)"
    )]
    UnknownVariable {
        source_text: String,
        variable: String,
    },
    #[error(
        "`{source_text}` calls an unknown function {function:?}: use CEL's standard functions, isNaN, isInf, default, asInt or asFloat"
    )]
    UnknownFunction {
        source_text: String,
        function: String,
    },
    #[error(
        "`{source_text}` compares a result with the whole number {literal} using == or !=: results are doubles and CEL never equates {literal} with {literal}.0, so write {literal}.0"
    )]
    IntEquality {
        source_text: String,
        literal: String,
    },
    #[error(
        "`{source_text}` does not give true or false for a scalar result ({scalar}) nor for a vector result ({vector})"
    )]
    NotBoolean {
        source_text: String,
        scalar: String,
        vector: String,
    },
    #[error(
        "`{source_text}` is too expensive: its estimated cost for a result of {series} series is {cost}, over the limit of {limit} (as Kubernetes limits a CEL rule): nest fewer comprehensions (all, exists, map, filter) over `result`, or aggregate the query so that it returns fewer series"
    )]
    TooExpensive {
        source_text: String,
        series: u64,
        cost: u64,
        limit: u64,
    },
    #[error("`{source_text}` could not be evaluated for result {result}: {message}")]
    Evaluation {
        source_text: String,
        result: String,
        message: String,
    },
}

/// A compiled condition, ready to evaluate many times.
#[derive(Clone, Debug)]
pub struct Condition {
    source_text: String,
    program: Arc<Program>,
}

impl Condition {
    /// Compiles and checks a condition (see the module documentation for what is checked).
    pub fn compile(source_text: &str) -> Result<Self, ConditionError> {
        Self::compile_checked(source_text, true)
    }

    /// Compiles a condition over a JSON `result` (web provider), whose shape only the
    /// endpoint knows: every check but the sample evaluations, which assume numbers.
    pub fn compile_for_json(source_text: &str) -> Result<Self, ConditionError> {
        Self::compile_checked(source_text, false)
    }

    fn compile_checked(source_text: &str, numeric_result: bool) -> Result<Self, ConditionError> {
        let program = Program::compile(source_text).map_err(|e| ConditionError::Syntax {
            source_text: source_text.to_string(),
            message: e.to_string().trim().to_string(),
        })?;
        let references = program.references();
        let mut facts = TreeFacts::default();
        inspect(
            program.expression(),
            &mut vec!["result".to_string()],
            &mut facts,
        );
        if let Some(literal) = facts.int_equality {
            return Err(ConditionError::IntEquality {
                source_text: source_text.to_string(),
                literal,
            });
        }
        let binders = facts.binders;
        let mut variables = references.variables();
        variables.sort_unstable();
        if let Some(variable) = variables
            .into_iter()
            .find(|v| *v != "result" && !binders.iter().any(|b| b == v))
        {
            return Err(ConditionError::UnknownVariable {
                source_text: source_text.to_string(),
                variable: variable.to_string(),
            });
        }
        let mut functions = references.functions();
        functions.sort_unstable();
        if let Some(function) = functions
            .into_iter()
            .find(|f| !KNOWN_FUNCTIONS.contains(f) && !is_operator(f))
        {
            return Err(ConditionError::UnknownFunction {
                source_text: source_text.to_string(),
                function: function.to_string(),
            });
        }
        let condition = Self {
            source_text: source_text.to_string(),
            program: Arc::new(program),
        };
        // Before the sample evaluations below, which would pay the cost.
        condition.within_cost_limit(RESULT_SERIES_BOUND)?;
        if !numeric_result {
            return Ok(condition);
        }
        let scalar = condition.evaluate(&ResultValue::Scalar(0.5));
        // Several elements, so that `result[1]` on a two-series query is not a type error.
        let vector = condition.evaluate(&ResultValue::Vector(vec![0.5; 4]));
        if scalar.is_err() && vector.is_err() {
            let reason = |r: Result<bool, ConditionError>| match r {
                Err(ConditionError::Evaluation { message, .. }) => message,
                Err(other) => other.to_string(),
                Ok(_) => unreachable!("only errors are described"),
            };
            return Err(ConditionError::NotBoolean {
                source_text: source_text.to_string(),
                scalar: reason(scalar),
                vector: reason(vector),
            });
        }
        Ok(condition)
    }

    pub fn source_text(&self) -> &str {
        &self.source_text
    }

    /// The estimated worst-case cost of evaluating the condition on a result of `series`
    /// series (a scalar counts as one): about one unit per expression node evaluated or list
    /// element copied, compared or searched, with each comprehension's body counted once per
    /// element of the list it ranges over, as Kubernetes estimates CEL costs.
    pub fn estimated_cost(&self, series: u64) -> u64 {
        cost(
            self.program.expression(),
            &mut Scope {
                series,
                bound: Vec::new(),
            },
        )
    }

    fn within_cost_limit(&self, series: u64) -> Result<(), ConditionError> {
        let cost = self.estimated_cost(series);
        if cost > COST_LIMIT {
            return Err(ConditionError::TooExpensive {
                source_text: self.source_text.clone(),
                series,
                cost,
                limit: COST_LIMIT,
            });
        }
        Ok(())
    }

    /// Evaluates the condition; anything but a boolean is an error, and so is a condition too
    /// expensive for this result (see [`Condition::estimated_cost`]).
    pub fn evaluate(&self, result: &ResultValue) -> Result<bool, ConditionError> {
        let series = match result {
            ResultValue::Scalar(_) => 1,
            ResultValue::Vector(xs) => u64::try_from(xs.len()).unwrap_or(u64::MAX),
            ResultValue::Json(json) => json_size(json),
        };
        self.within_cost_limit(series)?;
        let mut context = Context::default();
        context.add_function("isNaN", |x: f64| x.is_nan());
        context.add_function("isInf", |x: f64| x.is_infinite());
        context.add_function("default", default_value);
        context.add_function("asFloat", as_float);
        context.add_function("asInt", as_int);
        let value = match result {
            ResultValue::Scalar(x) => Value::Float(*x),
            ResultValue::Vector(xs) => {
                Value::List(Arc::new(xs.iter().map(|x| Value::Float(*x)).collect()))
            }
            ResultValue::Json(json) => json_to_cel(json),
        };
        context.add_variable_from_value("result", value);
        let evaluation_error = |message: String| ConditionError::Evaluation {
            source_text: self.source_text.clone(),
            result: describe(result),
            message,
        };
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(evaluation_error(format!(
                "it gave {other:?}, not true or false"
            ))),
            Err(e) => Err(evaluation_error(e.to_string())),
        }
    }
}

/// What a condition's work is, when it is done off the async runtime (see [`off_the_runtime`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvaluationError {
    #[error(
        "evaluating the conditions took longer than {0:?}, so this measurement is an error: simplify the conditions"
    )]
    TimedOut(Duration),
    #[error("evaluating the conditions failed inside the CEL evaluator: {0}")]
    Panicked(String),
}

/// Runs `work` (evaluating conditions: CPU-bound, unlike everything else a reconcile does) on
/// the blocking thread pool, so that it never holds up the async workers that serve every other
/// Canary and `/healthz`, and gives up waiting after `limit`. A thread still evaluating after
/// that finishes on its own; its result is dropped ([`COST_LIMIT`] bounds how long it runs).
pub async fn off_the_runtime<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EvaluationError> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) => Err(EvaluationError::Panicked(panic_message(join))),
        Err(_) => Err(EvaluationError::TimedOut(limit)),
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string()),
        Err(join) => join.to_string(),
    }
}

/// The lengths of the lists a value holds, outermost first: `[]` for a scalar, `[n]` for
/// `result`, `[n, n]` for `result.map(x, result)`. Maps count as lists of their values.
type Shape = Vec<u64>;

/// The variables the cost estimate knows: `result` and the comprehension variables in scope.
struct Scope<'a> {
    series: u64,
    bound: Vec<(&'a str, Shape)>,
}

impl<'a> Scope<'a> {
    fn lookup(&self, name: &str) -> Shape {
        match self.bound.iter().rev().find(|(n, _)| *n == name) {
            Some((_, shape)) => shape.clone(),
            None if name == "result" => vec![self.series],
            None => Vec::new(),
        }
    }

    /// Evaluates `inside` with `c`'s variables bound: the element of its range, and the
    /// accumulator with `accumulator` as its shape.
    fn with_comprehension<T>(
        &mut self,
        c: &'a ComprehensionExpr,
        range: &Shape,
        accumulator: Shape,
        inside: impl FnOnce(&mut Self) -> T,
    ) -> T {
        let depth = self.bound.len();
        self.bound.push((&c.iter_var, element(range)));
        if let Some(second) = &c.iter_var2 {
            self.bound.push((second, Vec::new()));
        }
        self.bound.push((&c.accu_var, accumulator));
        let value = inside(self);
        self.bound.truncate(depth);
        value
    }
}

/// The shape of an element of a list of shape `list`.
fn element(list: &Shape) -> Shape {
    list.get(1..).map(<[u64]>::to_vec).unwrap_or_default()
}

/// The larger of two shapes, level by level.
fn widest(a: Shape, b: Shape) -> Shape {
    let (mut long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    for (l, s) in long.iter_mut().zip(short) {
        *l = (*l).max(s);
    }
    long
}

/// How many values a value of `shape` holds in all, nested ones included.
fn elements(shape: &Shape) -> u64 {
    shape
        .iter()
        .fold(1, |n, len| n.saturating_mul((*len).max(1)))
}

/// How many times a comprehension's body runs over a range of `range`'s shape.
fn iterations(range: &Shape) -> u64 {
    range.first().copied().unwrap_or(1)
}

fn shape<'a>(expr: &'a IdedExpr, scope: &mut Scope<'a>) -> Shape {
    match &expr.expr {
        Expr::Ident(name) => scope.lookup(name),
        Expr::List(list) => {
            let inner = list
                .elements
                .iter()
                .map(|e| shape(e, scope))
                .fold(Vec::new(), widest);
            std::iter::once(list.elements.len() as u64)
                .chain(inner)
                .collect()
        }
        Expr::Map(map) => {
            let inner = map
                .entries
                .iter()
                .filter_map(|entry| match &entry.expr {
                    EntryExpr::MapEntry(e) => Some(shape(&e.value, scope)),
                    EntryExpr::StructField(_) => None,
                })
                .fold(Vec::new(), widest);
            std::iter::once(map.entries.len() as u64)
                .chain(inner)
                .collect()
        }
        Expr::Select(select) if !select.test => element(&shape(&select.operand, scope)),
        Expr::Call(call) => {
            let mut args = call.target.iter().map(|t| &**t).chain(&call.args);
            match call.func_name.as_str() {
                "_[_]" => element(&args.next().map(|a| shape(a, scope)).unwrap_or_default()),
                "_+_" => {
                    let a = args.next().map(|a| shape(a, scope)).unwrap_or_default();
                    let b = args.next().map(|b| shape(b, scope)).unwrap_or_default();
                    if a.is_empty() && b.is_empty() {
                        return Vec::new();
                    }
                    let length = iterations(&a).saturating_add(iterations(&b));
                    std::iter::once(length)
                        .chain(widest(element(&a), element(&b)))
                        .collect()
                }
                "_?_:_" => args
                    .skip(1)
                    .map(|a| shape(a, scope))
                    .fold(Vec::new(), widest),
                "default" => args.map(|a| shape(a, scope)).fold(Vec::new(), widest),
                _ => Vec::new(),
            }
        }
        Expr::Comprehension(c) => {
            let range = shape(&c.iter_range, scope);
            let accumulator = accumulator_shape(c, &range, scope);
            scope.with_comprehension(c, &range, accumulator, |scope| shape(&c.result, scope))
        }
        _ => Vec::new(),
    }
}

/// The shape of a comprehension's accumulator once the loop is done: one step's growth (as
/// `map` and `filter` append one element per step) times the number of steps.
fn accumulator_shape<'a>(c: &'a ComprehensionExpr, range: &Shape, scope: &mut Scope<'a>) -> Shape {
    let initial = shape(&c.accu_init, scope);
    let step = scope.with_comprehension(c, range, initial.clone(), |scope| {
        shape(&c.loop_step, scope)
    });
    let Some((&after_one, inner)) = step.split_first() else {
        // all, exists, exists_one: a boolean or a count.
        return step;
    };
    let start = initial.first().copied().unwrap_or(0);
    let growth = after_one.saturating_sub(start);
    std::iter::once(start.saturating_add(iterations(range).saturating_mul(growth)))
        .chain(inner.iter().copied())
        .collect()
}

fn cost<'a>(expr: &'a IdedExpr, scope: &mut Scope<'a>) -> u64 {
    let sum = |costs: &mut dyn Iterator<Item = u64>| costs.fold(1u64, u64::saturating_add);
    match &expr.expr {
        Expr::List(list) => sum(&mut list.elements.iter().map(|e| cost(e, scope))),
        Expr::Map(map) => sum(&mut map.entries.iter().map(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => cost(&e.key, scope).saturating_add(cost(&e.value, scope)),
            EntryExpr::StructField(f) => cost(&f.value, scope),
        })),
        Expr::Struct(s) => sum(&mut s.entries.iter().map(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => cost(&e.key, scope).saturating_add(cost(&e.value, scope)),
            EntryExpr::StructField(f) => cost(&f.value, scope),
        })),
        Expr::Select(select) => cost(&select.operand, scope).saturating_add(1),
        Expr::Call(call) => {
            let args: Vec<&IdedExpr> = call.target.iter().map(|t| &**t).chain(&call.args).collect();
            if call.func_name == "_?_:_"
                && let [condition, then, otherwise] = args.as_slice()
            {
                let branch = cost(then, scope).max(cost(otherwise, scope));
                return cost(condition, scope)
                    .saturating_add(branch)
                    .saturating_add(1);
            }
            let own = sum(&mut args.iter().map(|a| cost(a, scope)));
            // What the call itself does to the lists it is given.
            let work = match call.func_name.as_str() {
                // Concatenation copies both lists.
                "_+_" => args
                    .iter()
                    .map(|a| shape(a, scope))
                    .filter(|s| !s.is_empty())
                    .map(|s| iterations(&s))
                    .fold(0, u64::saturating_add),
                // Equality compares every nested element; `in` and max/min look at each.
                "_==_" | "_!=_" | "@in" | "max" | "min" => args
                    .iter()
                    .map(|a| shape(a, scope))
                    .filter(|s| !s.is_empty())
                    .map(|s| elements(&s))
                    .max()
                    .unwrap_or(0),
                _ => 0,
            };
            own.saturating_add(work)
        }
        Expr::Comprehension(c) => {
            let range = shape(&c.iter_range, scope);
            let accumulator = accumulator_shape(c, &range, scope);
            let before = cost(&c.iter_range, scope).saturating_add(cost(&c.accu_init, scope));
            let (body, after) = scope.with_comprehension(c, &range, accumulator, |scope| {
                let body = cost(&c.loop_cond, scope).saturating_add(cost(&c.loop_step, scope));
                (body, cost(&c.result, scope))
            });
            before
                .saturating_add(iterations(&range).saturating_mul(body))
                .saturating_add(after)
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 1,
    }
}

/// Facts about a condition's syntax tree that the CEL crate does not check.
#[derive(Default)]
struct TreeFacts {
    /// Variables bound by comprehension macros, e.g. `x` in `result.all(x, x < 0.01)`.
    binders: Vec<String>,
    /// `==`/`!=` between an int literal and a double such as `result[0] == 0`: CEL never
    /// equates an int with a double, so such a comparison is silently never true.
    int_equality: Option<String>,
}

fn inspect(expr: &IdedExpr, doubles: &mut Vec<String>, facts: &mut TreeFacts) {
    match &expr.expr {
        Expr::Call(call) => {
            if matches!(call.func_name.as_str(), "_==_" | "_!=_")
                && let [a, b] = call.args.as_slice()
                && let Some(literal) = int_literal(a)
                    .filter(|_| is_double(b, doubles))
                    .or_else(|| int_literal(b).filter(|_| is_double(a, doubles)))
            {
                facts.int_equality.get_or_insert(literal.to_string());
            }
            for child in call.target.iter().map(|t| &**t).chain(&call.args) {
                inspect(child, doubles, facts);
            }
        }
        Expr::Comprehension(c) => {
            inspect(&c.iter_range, doubles, facts);
            facts.binders.push(c.iter_var.clone());
            facts.binders.extend(c.iter_var2.iter().cloned());
            facts.binders.push(c.accu_var.clone());
            let over_doubles = is_double(&c.iter_range, doubles);
            if over_doubles {
                doubles.push(c.iter_var.clone());
            }
            for child in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                inspect(child, doubles, facts);
            }
            if over_doubles {
                doubles.pop();
            }
        }
        Expr::List(list) => {
            for child in &list.elements {
                inspect(child, doubles, facts);
            }
        }
        Expr::Select(select) => inspect(&select.operand, doubles, facts),
        _ => {}
    }
}

fn int_literal(expr: &IdedExpr) -> Option<i64> {
    match &expr.expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(*i.inner()),
        _ => None,
    }
}

/// Whether an expression certainly yields doubles (or a list of them): `result`, its
/// elements, double literals, and arithmetic on any of those.
fn is_double(expr: &IdedExpr, doubles: &[String]) -> bool {
    match &expr.expr {
        Expr::Ident(name) => doubles.contains(name),
        Expr::Literal(LiteralValue::Double(_)) => true,
        Expr::Call(call) => match call.func_name.as_str() {
            "_[_]" => call.args.first().is_some_and(|a| is_double(a, doubles)),
            "_+_" | "_-_" | "_*_" | "_/_" | "-_" => call.args.iter().any(|a| is_double(a, doubles)),
            "double" | "default" => true,
            _ => false,
        },
        _ => false,
    }
}

/// Operators appear among a program's references as `_>=_`, `_[_]`, `!_` and the like.
fn is_operator(name: &str) -> bool {
    name.starts_with('_') || name.ends_with('_') || name.starts_with('@')
}

/// `default(x, fallback)`: `x` unless it is missing, NaN, infinite, or fails to evaluate.
fn default_value(ftx: &FunctionContext, value: Expression, fallback: Expression) -> ResolveResult {
    match ftx.ptx.resolve(&value) {
        Ok(Value::Float(x)) if x.is_finite() => Ok(Value::Float(x)),
        Ok(Value::Float(_)) | Ok(Value::Null) | Err(ExecutionError::IndexOutOfBounds(_)) => {
            ftx.ptx.resolve(&fallback)
        }
        Err(ExecutionError::NoSuchKey(_)) => ftx.ptx.resolve(&fallback),
        Ok(other) => Ok(other),
        Err(e) => Err(e),
    }
}

/// How many values a JSON result holds (at least one), for the cost estimate: the
/// elements of its largest list or map, at any depth.
fn json_size(json: &serde_json::Value) -> u64 {
    match json {
        serde_json::Value::Array(items) => items
            .iter()
            .map(json_size)
            .fold(items.len() as u64, u64::max),
        serde_json::Value::Object(fields) => fields
            .values()
            .map(json_size)
            .fold(fields.len() as u64, u64::max),
        _ => 1,
    }
    .max(1)
}

/// A JSON value as CEL sees it. Every number is a double, as a Prometheus result is, so
/// conditions compare the same way whichever provider measured.
fn json_to_cel(json: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(text) => Value::String(Arc::new(text.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(fields) => {
            let map: std::collections::HashMap<cel::objects::Key, Value> = fields
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.clone()), json_to_cel(v)))
                .collect();
            Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

/// Argo Rollouts' `asFloat(x)`: a number, or a string holding one, as a double.
fn as_float(ftx: &FunctionContext, value: Value) -> ResolveResult {
    match value {
        Value::Float(x) => Ok(Value::Float(x)),
        Value::Int(x) => Ok(Value::Float(x as f64)),
        Value::UInt(x) => Ok(Value::Float(x as f64)),
        Value::String(text) => text
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| ftx.error(format!("asFloat: {text:?} is not a number"))),
        other => Err(ftx.error(format!("asFloat: {other:?} is not a number"))),
    }
}

/// Argo Rollouts' `asInt(x)`: a whole number, or a string holding one, as an int.
fn as_int(ftx: &FunctionContext, value: Value) -> ResolveResult {
    match value {
        Value::Int(x) => Ok(Value::Int(x)),
        Value::UInt(x) => i64::try_from(x)
            .map(Value::Int)
            .map_err(|_| ftx.error("asInt: out of range")),
        Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(Value::Int(x as i64)),
        Value::String(text) => text
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| ftx.error(format!("asInt: {text:?} is not a whole number"))),
        other => Err(ftx.error(format!("asInt: {other:?} is not a whole number"))),
    }
}

/// A result as people read it: `0.9871`, `[0.98, 0.97]`, `[]`, `NaN`.
pub fn describe(result: &ResultValue) -> String {
    match result {
        ResultValue::Json(json) => json.to_string(),
        ResultValue::Scalar(x) => format_number(*x),
        ResultValue::Vector(xs) => {
            let items: Vec<String> = xs.iter().map(|x| format_number(*x)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// Numbers with up to 6 significant decimals and no trailing zeros.
pub fn format_number(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if x != 0.0 && (x.abs() >= 1e9 || x.abs() < 1e-4) {
        return format!("{x:.4e}");
    }
    let text = format!("{x:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResultValue::{Scalar, Vector};

    #[test]
    fn evaluates_argo_and_flagger_style_conditions() {
        let cases: [(&str, ResultValue, bool); 17] = [
            ("result[0] >= 0.95", Vector(vec![0.97]), true),
            ("result[0] >= 0.95", Vector(vec![0.90]), false),
            ("result >= 0.95", Scalar(0.99), true),
            ("result > 1", Scalar(1.5), true),
            ("result[0] < 500", Vector(vec![250.0]), true),
            ("size(result) == 0", Vector(vec![]), true),
            ("isNaN(result[0])", Vector(vec![f64::NAN]), true),
            ("isNaN(result)", Scalar(1.0), false),
            ("isInf(result[0])", Vector(vec![f64::INFINITY]), true),
            ("default(result[0], 0.0) >= 0.95", Vector(vec![]), false),
            ("default(result[0], 1.0) >= 0.95", Vector(vec![]), true),
            (
                "default(result[0], 1.0) >= 0.95",
                Vector(vec![f64::NAN]),
                true,
            ),
            ("result.all(x, x < 0.01)", Vector(vec![0.001, 0.002]), true),
            ("result.exists(x, x > 0.5)", Vector(vec![0.1, 0.2]), false),
            // What the Argo converter produces from `len(result) == 0`.
            ("size(result) == 0", Vector(vec![]), true),
            ("result[0] == 0.0", Vector(vec![0.0]), true),
            ("result[0] * 100.0 >= 99.0", Vector(vec![0.995]), true),
        ];
        for (source, result, expected) in cases {
            let condition = Condition::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(
                condition
                    .evaluate(&result)
                    .unwrap_or_else(|e| panic!("{source}: {e}")),
                expected,
                "{source} on {result:?}"
            );
        }
    }

    #[test]
    fn rejects_conditions_that_cannot_work() {
        let cases = [
            ("result[0] >=", "not valid CEL"),
            ("value >= 0.95", "uses the variable \"value\""),
            ("avg(result) > 1", "unknown function \"avg\""),
            ("result[0]", "does not give true or false"),
            ("result[0] == 0", "write 0.0"),
            ("1 != result", "write 1.0"),
            ("result.exists(x, x == 5)", "write 5.0"),
            ("result[0] * 100 >= 99.0", "does not give true or false"),
            ("result + 'x' > 1.0", "does not give true or false"),
        ];
        for (source, expected) in cases {
            let err = Condition::compile(source).expect_err(source);
            assert!(err.to_string().contains(expected), "{source}: {err}");
        }
    }

    #[test]
    fn evaluation_errors_name_the_condition_and_the_result() {
        let condition = Condition::compile("result[0] >= 0.95").unwrap();
        let err = condition.evaluate(&Vector(vec![])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("result[0] >= 0.95") && text.contains("[]"),
            "{text}"
        );
    }

    /// `[0.0, 1.0, …, 9.0]`: ten elements, as a condition may write a list literal.
    const TEN: &str = "[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]";

    #[test]
    fn estimated_costs_grow_as_the_evaluation_does() {
        // (condition, series, cost at most, cost at least)
        let cases: [(&str, u64, u64, u64); 9] = [
            // Indexing: the same whatever the number of series.
            ("result[0] >= 0.95", 1, 10, 1),
            ("result[0] >= 0.95", 1_000_000, 10, 1),
            ("default(result[0], 0.0) >= 0.95", 1_000_000, 10, 1),
            // One comprehension: linear in the series.
            ("result.all(x, x < 0.01)", 1_000, 20_000, 1_000),
            ("result.all(x, x < 0.01)", 1_000_000, 20_000_000, 1_000_000),
            // map appends to its accumulator at each step, copying it: quadratic.
            (
                "result.map(x, x * 2.0).all(y, y < 1.0)",
                1_000,
                2_000_000,
                500_000,
            ),
            // Nested comprehensions multiply.
            (
                "result.all(a, result.exists(b, a < b))",
                100,
                200_000,
                10_000,
            ),
            ("size(result) == 0 || result[0] > 0.5", 1_000_000, 20, 1),
            // `in` searches the list.
            ("0.5 in result", 1_000, 2_000, 1_000),
        ];
        for (source, series, at_most, at_least) in cases {
            let cost = Condition::compile(source)
                .unwrap_or_else(|e| panic!("{source}: {e}"))
                .estimated_cost(series);
            assert!(
                (at_least..=at_most).contains(&cost),
                "{source} on {series} series: cost {cost}, expected {at_least}..={at_most}"
            );
        }
    }

    #[test]
    fn conditions_over_the_cost_limit_are_refused_before_any_evaluation() {
        let nested = |depth: usize| {
            let vars: Vec<String> = (0..depth).map(|i| format!("v{i}")).collect();
            let mut body = format!("{} >= 0.0", vars.join(" + "));
            for var in vars.iter().rev() {
                body = format!("{TEN}.all({var}, {body})");
            }
            body
        };
        // (condition, refused)
        let cases = [
            ("result.all(x, x < 0.01)".to_string(), false),
            ("result.all(a, result.exists(b, a < b))".to_string(), false),
            (
                "result.all(a, result.all(b, result.all(c, a + b + c >= 0.0)))".to_string(),
                true,
            ),
            (
                "result.map(a, result.map(b, result)).size() > 0".to_string(),
                true,
            ),
            // 10^4 steps whatever the result; 10^8 would take minutes.
            (nested(4), false),
            (nested(8), true),
        ];
        for (source, refused) in cases {
            match Condition::compile(&source) {
                Err(ConditionError::TooExpensive {
                    series,
                    cost,
                    limit,
                    ..
                }) => {
                    assert!(refused, "{source}: refused with cost {cost}");
                    assert_eq!((series, limit), (RESULT_SERIES_BOUND, COST_LIMIT));
                    assert!(cost > COST_LIMIT, "{source}");
                }
                Err(other) => panic!("{source}: {other}"),
                Ok(condition) => assert!(
                    !refused,
                    "{source}: accepted with cost {}",
                    condition.estimated_cost(RESULT_SERIES_BOUND)
                ),
            }
        }
        let message = Condition::compile(&nested(8)).unwrap_err().to_string();
        assert!(
            message.contains("too expensive") && message.contains("1000 series"),
            "{message}"
        );
    }

    #[test]
    fn an_accepted_condition_is_not_evaluated_on_a_result_too_large_for_it() {
        let condition = Condition::compile("result.all(a, result.exists(b, a < b))").unwrap();
        let small = Vector(vec![0.1, 0.2]);
        assert_eq!(condition.evaluate(&small), Ok(false));
        let huge = Vector(vec![0.5; 100_000]);
        let err = condition.evaluate(&huge).unwrap_err();
        assert!(
            matches!(
                err,
                ConditionError::TooExpensive {
                    series: 100_000,
                    ..
                }
            ),
            "{err}"
        );
        // A condition that looks at one element judges any number of series.
        let first = Condition::compile("result[0] < 1.0").unwrap();
        assert_eq!(first.evaluate(&huge), Ok(true));
    }

    #[tokio::test]
    async fn work_off_the_runtime_is_bounded_in_time_and_survives_panics() {
        let value = off_the_runtime(Duration::from_secs(10), || 6 * 7).await;
        assert_eq!(value, Ok(42));
        // The timeout, not the work, ends the wait: the work would still be sleeping.
        let slow = off_the_runtime(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(1));
            true
        })
        .await;
        assert_eq!(
            slow,
            Err(EvaluationError::TimedOut(Duration::from_millis(50)))
        );
        let panicked = off_the_runtime(Duration::from_secs(10), || -> bool {
            panic!("the evaluator gave up")
        })
        .await;
        assert_eq!(
            panicked,
            Err(EvaluationError::Panicked("the evaluator gave up".into()))
        );
    }

    #[test]
    fn formats_numbers_for_people() {
        let cases = [
            (0.987123456, "0.987123"),
            (1.0, "1"),
            (250.5, "250.5"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Inf"),
            (1.5e-7, "1.5000e-7"),
        ];
        for (x, expected) in cases {
            assert_eq!(format_number(x), expected);
        }
    }
}
