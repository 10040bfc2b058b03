// A Host may not move to another thread: alloc_irb and the other services are valid only on
// the polling thread. (Use `Host::completer` or `Host::waker` there instead.)
use vmi_device::{Host, Op};

fn alloc_elsewhere(host: Host) {
    std::thread::spawn(move || {
        let _ = host.alloc_irb(Op::Recv, 1);
    });
}

fn main() {}
