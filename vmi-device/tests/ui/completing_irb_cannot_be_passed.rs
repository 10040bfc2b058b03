// A completion step cannot pass, complete or keep the IRB it is lent.
use vmi_device::CompletingIrb;

fn complete(irb: &mut CompletingIrb) {
    let taken = *irb;
    drop(taken);
}

fn main() {}
