fn main() {
    println!("patina");
}
