// Bytes read from a grabbed slab borrow it: they cannot be used after it is released.
use vmi_core::GrabbedSlab;

fn keep(mut grabbed: GrabbedSlab) -> usize {
    let bytes = grabbed.read(16);
    grabbed.release();
    bytes.len()
}

fn main() {}
