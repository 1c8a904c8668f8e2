fn main() {
    eprintln!("drbdpool: not yet wired");
    std::process::exit(1);
}
