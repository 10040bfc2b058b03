// Bytes of a segment are borrowed from the Irb: they cannot outlive passing it on.
use vmi_device::Irb;

fn peek(irb: Irb) -> &'static [u8] {
    let bytes = irb.segment(0);
    irb.pass();
    bytes
}

fn main() {}
