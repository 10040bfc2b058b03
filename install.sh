#!/usr/bin/env bash
# Installs vmi into a prefix, laid out as C and Rust users expect:
#   bin/                       vmisend, vmirecv, vmi-alltoall, vmi-info, vmi-perf
#   lib/libvmi.so, libvmi.a    the VMI 2.1 C API
#   lib/vmi/                   the device plugins (found there with no variable set)
#   lib/pkgconfig/vmi.pc       pkg-config --cflags --libs vmi   (vmi-static.pc: libvmi.a)
#   include/vmi.h              the application API; include/vmi_device.h, the device ABI
#   share/vmi/specfiles/       the shipped specfiles (their library= names resolve to lib/vmi)
#   share/vmi/examples/        the tutorial's vmisend.c and vmirecv.c
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: ./install.sh [--prefix DIR] [--profile release|debug] [--no-build]

  --prefix DIR     where to install (default /usr/local)
  --profile NAME   which cargo build to install (default release)
  --no-build       install what is built already (cargo build --workspace --bins --lib)
  -h, --help       this text

Then: cc -o prog prog.c $(PKG_CONFIG_PATH=DIR/lib/pkgconfig pkg-config --cflags --libs vmi)
USAGE
}

prefix=/usr/local
profile=release
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --profile) profile="${2:?--profile needs release or debug}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$profile" in
    release|debug) ;;
    *) echo "install.sh: --profile must be release or debug, not '$profile'" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")" && pwd)"
from="${CARGO_TARGET_DIR:-$root/target}/$profile"
if [ "$build" = 1 ]; then
    flags=()
    [ "$profile" = release ] && flags+=(--release)
    (cd "$root" && cargo build "${flags[@]}" --workspace --bins --lib)
fi
for f in libvmi.so libvmi.a vmisend vmirecv vmi-alltoall vmi-info vmi-perf libvmi_tcp.so; do
    [ -e "$from/$f" ] || { echo "install.sh: $from/$f is missing; build first (drop --no-build)" >&2; exit 1; }
done

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"

install -d "$prefix/bin" "$prefix/lib/vmi" "$prefix/lib/pkgconfig" "$prefix/include" \
    "$prefix/share/vmi/specfiles" "$prefix/share/vmi/examples"
install -m 755 "$from/vmisend" "$from/vmirecv" "$from/vmi-alltoall" "$from/vmi-info" "$from/vmi-perf" "$prefix/bin/"
install -m 755 "$from/libvmi.so" "$prefix/lib/"
install -m 644 "$from/libvmi.a" "$prefix/lib/"
install -m 755 "$from"/libvmi_*.so "$prefix/lib/vmi/"
install -m 644 "$root/vmi-capi/include/vmi.h" "$root/vmi-device/include/vmi_device.h" "$prefix/include/"
install -m 644 "$root"/specfiles/*.xml "$root/specfiles/README.md" "$prefix/share/vmi/specfiles/"
install -m 644 "$root"/examples/c/*.c "$prefix/share/vmi/examples/"

# The linker flags libvmi.a needs: rustc --print native-static-libs for vmi-capi.
static_libs="-ldl -lgcc_s -lutil -lrt -lpthread -lm -lc"
cat > "$prefix/lib/pkgconfig/vmi.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: vmi
Description: vmi, a pluggable messaging layer: the VMI 2.1 C API
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lvmi -Wl,-rpath,\${libdir}
Libs.private: $static_libs
PC
cat > "$prefix/lib/pkgconfig/vmi-static.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: vmi-static
Description: vmi, a pluggable messaging layer: the VMI 2.1 C API, linked statically
Version: $version
Cflags: -I\${includedir}
Libs: \${libdir}/libvmi.a $static_libs
PC

echo "vmi $version installed in $prefix"
echo "  export VMI_SPECFILE=$prefix/share/vmi/specfiles/tcp.xml"
echo "  cc -o vmisend $prefix/share/vmi/examples/vmisend.c \$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs vmi)"
