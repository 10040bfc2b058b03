// Bytes of a received slab live for the callback only: a handler cannot keep them (grab the
// slab to keep it).
use vmi_core::{ConnId, Ctx, Handler, Recv, Slab};

struct Keeper {
    kept: Option<&'static [u8]>,
}

impl Handler for Keeper {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.kept = Some(slab.read(16));
    }
}

fn main() {}
