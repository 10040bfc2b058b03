/*
 * cache_check.c: VMI 2.1's registration cache from C, through libvmi.
 *
 *   cache_check KEY     registers, finds the registration again, unmaps the memory and maps
 *                       other memory at the same address, and checks that the stale
 *                       registration is not served; misuse is refused
 *
 * Prints "CACHE OK caching=1" (or caching=0 where memory cannot be watched, or with
 * VMI_DISABLE_REGCACHE=1) only if every check passed; a failed check prints "FAIL: ..." and
 * exits 1.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <vmi.h>

#include "check.h"

#define LEN (64 * 1024)

int main(int argc, char **argv)
{
    PVMI_CACHE_ENTRY e1, e2, e3, bad = NULL;
    VMI_CACHE_STATS s;
    unsigned char *p, *q, *base;
    int caching;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: cache_check KEY\n");
        return 2;
    }
    OK(VMI_Init(argc, argv));
    p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap");
    memset(p, 7, LEN);

    OK(VMI_Cache_Register(p + 100, 1000, &e1));
    CHECK(e1->addr == p + 100 && e1->size == 1000, "the entry names the range asked for");
    base = VMI_BUFFER_ADDRESS(e1->bufferHandle);
    CHECK(base != NULL && base <= p + 100 &&
              base + VMI_Buffer_Size(e1->bufferHandle) >= p + 1100,
          "the registration covers the range");
    OK(VMI_Cache_Deregister(e1));

    /* The same pages again: served from the cache when it caches. */
    OK(VMI_Cache_Register(p + 200, 500, &e2));
    OK(VMI_Cache_Get_Stats(&s));
    caching = s.uncached == 0;
    if (caching) {
        CHECK(s.hits == 1 && s.misses == 1, "hits %llu misses %llu", (unsigned long long) s.hits,
              (unsigned long long) s.misses);
    } else {
        CHECK(s.hits == 0 && s.uncached == 2, "not caching: hits %llu, uncached %llu",
              (unsigned long long) s.hits, (unsigned long long) s.uncached);
    }
    OK(VMI_Cache_Deregister(e2));

    /* Other memory at the same address: the old registration must not be served. */
    CHECK(munmap(p, LEN) == 0, "munmap");
    q = mmap(p, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
             -1, 0);
    CHECK(q == p, "mapping other memory at the same address");
    OK(VMI_Cache_Register(q + 100, 1000, &e3));
    OK(VMI_Cache_Get_Stats(&s));
    if (caching) {
        CHECK(s.invalidated >= 1, "the unmapping dropped the registration (%llu invalidated)",
              (unsigned long long) s.invalidated);
        CHECK(s.hits == 1 && s.misses == 2, "a new registration: hits %llu misses %llu",
              (unsigned long long) s.hits, (unsigned long long) s.misses);
    }
    OK(VMI_Cache_Stats());

    /* Misuse. */
    CHECK(VMI_Cache_Register(NULL, 10, &bad) == VMI_STATUS_INVALID_PARAMETER, "a NULL address");
    CHECK(VMI_Cache_Register(q, 0, &bad) == VMI_STATUS_INVALID_PARAMETER, "no bytes");
    CHECK(VMI_Cache_Register(q, 10, NULL) == VMI_STATUS_INVALID_PARAMETER, "no output");
    OK(VMI_Cache_Deregister(e3));
    CHECK(VMI_Cache_Deregister(e3) == VMI_STATUS_INVALID_HANDLE, "an entry given back twice");
    CHECK(VMI_Cache_Deregister((PVMI_CACHE_ENTRY) &s) == VMI_STATUS_INVALID_HANDLE,
          "a made-up entry");
    munmap(q, LEN);
    OK(VMI_Terminate(0));
    printf("CACHE OK caching=%d\n", caching);
    return 0;
}
