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

use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use cel::objects::Value;
use cel::parser::Expression;
use cel::{Context, ExecutionError, FunctionContext, Program, ResolveResult};

/// Functions a condition may call: CEL's standard library (as the `cel` crate provides it)
/// and ours.
const KNOWN_FUNCTIONS: [&str; 26] = [
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

/// The value a query produced, as a condition sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum ResultValue {
    Scalar(f64),
    Vector(Vec<f64>),
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
        "`{source_text}` calls an unknown function {function:?}: use CEL's standard functions, isNaN, isInf or default"
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

    /// Evaluates the condition; anything but a boolean is an error.
    pub fn evaluate(&self, result: &ResultValue) -> Result<bool, ConditionError> {
        let mut context = Context::default();
        context.add_function("isNaN", |x: f64| x.is_nan());
        context.add_function("isInf", |x: f64| x.is_infinite());
        context.add_function("default", default_value);
        let value = match result {
            ResultValue::Scalar(x) => Value::Float(*x),
            ResultValue::Vector(xs) => {
                Value::List(Arc::new(xs.iter().map(|x| Value::Float(*x)).collect()))
            }
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

/// A result as people read it: `0.9871`, `[0.98, 0.97]`, `[]`, `NaN`.
pub fn describe(result: &ResultValue) -> String {
    match result {
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
