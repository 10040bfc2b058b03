// A view of a grabbed slab borrows it: it cannot be read after the slab is released.
use vmi_core::GrabbedSlab;

fn keep(grabbed: GrabbedSlab) -> Vec<u8> {
    let mut view = grabbed.slab();
    drop(grabbed);
    view.read_to_vec()
}

fn main() {}
