fn main() {
    println!("canary");
}
