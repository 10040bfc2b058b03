// A frame is zeroed memory the host reuses: only types valid for any bytes (bytemuck::Pod)
// may be read from it, never a String or a reference.
use vmi_device::Irb;

fn read_frame(mut irb: Irb) -> Irb {
    let name: &mut String = irb.frame::<String>();
    name.push('x');
    irb
}

fn main() {}
