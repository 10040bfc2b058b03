/*
 * A device written in C against vmi_device.h: a wire-neutral filter that counts the IRBs
 * it sees and stamps its per-IRB frame. The plugin tests compile it with cc against the
 * frozen ABI 1.0 header (tests/c/abi-1.0) and the current one, also in broken variants
 * (-DABI_MAJOR=99, -DVT_SIZE=16, ...) to check that the loader refuses them, and as a device
 * of a newer minor (-DNEWER_MINOR) with longer tables than the host knows.
 *
 * With -DCONSTRUCTOR_MARKER="\"/path\"" it creates that file when loaded, as a planted
 * library would run code: the tests check that an untrusted library is never loaded.
 *
 *   cc -shared -fPIC -I vmi-device/include tests/c/cfilter.c -o libvmi_cfilter.so
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmi_device.h"

#ifdef CONSTRUCTOR_MARKER
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(CONSTRUCTOR_MARKER, "w");
    if (f) {
        fputs("the library's constructor ran\n", f);
        fclose(f);
    }
}
#endif

#ifndef TYPE_NAME
#define TYPE_NAME "cfilter"
#endif
#ifndef SYMBOL
#define SYMBOL vmi_device_cfilter
#endif
#ifndef ABI_MAJOR
#define ABI_MAJOR VMI_ABI_MAJOR
#endif
#ifndef VT_SIZE
#define VT_SIZE sizeof(vmi_device_vtable)
#endif
#ifndef MAGIC
#define MAGIC VMI_DEVICE_MAGIC
#endif
#ifndef CREATE_RESULT
#define CREATE_RESULT VMI_CREATE_OK
#endif

typedef struct cfilter {
    const vmi_host_services *svc;
    void *host;
    uint64_t seen;
} cfilter;

static int32_t cfilter_submit(void *dev, vmi_irb *irb, uint8_t *frame) {
    cfilter *f = dev;
    (void)irb;
    f->seen++;
    *(uint64_t *)frame = f->seen;
    return VMI_PASS;
}

static int32_t cfilter_receive(void *dev, vmi_irb *irb, uint8_t *frame) {
    return cfilter_submit(dev, irb, frame);
}

static int32_t cfilter_create(const vmi_host_services *svc, void *host, const vmi_param *params, size_t nparams,
                              void **out, char *err, size_t err_len) {
    (void)params;
    (void)nparams;
    if (CREATE_RESULT != VMI_CREATE_OK) {
        strncpy(err, "the C device refused to start", err_len - 1);
        err[err_len - 1] = 0;
        return CREATE_RESULT;
    }
    cfilter *f = calloc(1, sizeof *f);
    if (!f) {
        strncpy(err, "out of memory", err_len - 1);
        return VMI_CREATE_FAILED;
    }
    f->svc = svc;
    f->host = host;
    *out = f;
    return VMI_CREATE_OK;
}

static void cfilter_destroy(void *dev) {
    free(dev);
}

#ifndef NEWER_MINOR
static const vmi_device_vtable cfilter_vtable = {
    VT_SIZE, cfilter_destroy, NULL, cfilter_submit, cfilter_receive, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
};

const vmi_device_descriptor SYMBOL = {
    MAGIC,           ABI_MAJOR,      VMI_ABI_MINOR, sizeof(vmi_device_descriptor),
    VMI_KIND_FILTER, VMI_DEVICE_WIRE_NEUTRAL, TYPE_NAME, "1.0.0",
    "a filter written in C", 8, 8, NULL, 0, cfilter_create, &cfilter_vtable,
};
#else
/* A device built for a future minor: both tables carry entries this host does not know. */
static int32_t cfilter_future(void *dev) {
    (void)dev;
    abort(); /* a host that does not know this entry must never call it */
}

static const struct {
    vmi_device_vtable known;
    int32_t (*future)(void *dev);
} cfilter_vtable = {
    {sizeof(cfilter_vtable), cfilter_destroy, NULL, cfilter_submit, cfilter_receive},
    cfilter_future,
};

const struct {
    vmi_device_descriptor known;
    uint64_t future_field;
} SYMBOL = {
    {MAGIC, ABI_MAJOR, VMI_ABI_MINOR + 7, sizeof(SYMBOL), VMI_KIND_FILTER, VMI_DEVICE_WIRE_NEUTRAL, TYPE_NAME,
     "1.0.0", "a filter written in C", 8, 8, NULL, 0, cfilter_create, &cfilter_vtable.known},
    0xfeedfacecafebeefull,
};
#endif
