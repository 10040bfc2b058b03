//! The application API's soundness rules, proven: each program in `ui/` breaks one rule and
//! must fail to compile with the message recorded beside it (`ui/*.stderr`). Regenerate the
//! messages after a toolchain update with `TRYBUILD=overwrite`, and read the diff.

#[test]
fn safe_application_code_cannot_break_the_rules() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
