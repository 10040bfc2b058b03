//! A vmi application that sets up no logger: starts vmi from `VMI_SPECFILE` with the key in
//! its first argument and exits. Tests use it to check that warnings a user must see (a
//! mistyped `VMI_` variable) reach stderr anyway.
#![allow(missing_docs)]

fn main() {
    let key = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "no-logger".into());
    match vmi_core::Vmi::init(Some(&key)) {
        Ok(_) => println!("started"),
        Err(e) => {
            eprintln!("no-logger: {e}");
            std::process::exit(1);
        }
    }
}
