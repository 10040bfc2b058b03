// A completion step only borrows the IRB: it cannot swap it for one the device owns, or the
// host would recycle an IRB the device still holds.
use vmi_device::{CompletingIrb, Irb};

struct Keeper {
    kept: Irb,
}

impl Keeper {
    fn complete(&mut self, irb: &mut CompletingIrb) {
        std::mem::swap(irb, &mut self.kept);
    }
}

fn main() {}
