// An Irb may not move to another thread: its host services are valid only on the polling
// thread. (Use `Irb::into_remote` and complete the RemoteIrb there instead.)
use vmi_device::{Irb, Status};

fn finish_elsewhere(irb: Irb) {
    std::thread::spawn(move || irb.complete(Status::Ok));
}

fn main() {}
