fn main() {
    std::process::exit(isoclip::cli::main());
}
