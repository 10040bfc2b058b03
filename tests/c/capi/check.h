/* What the C API checks share: fail loudly with the line and the library's last error, and
 * poll until a callback has set a flag. */
#ifndef VMI_CHECK_H
#define VMI_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include <vmi.h>

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stdout, "FAIL (line %d): ", __LINE__);                    \
            fprintf(stdout, __VA_ARGS__);                                     \
            fprintf(stdout, " [last error: %s]\n", VMI_Last_Error());         \
            fflush(stdout);                                                   \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

#define OK(call) CHECK(VMI_SUCCESS(call), "%s", #call)

/* Polls until *flag is set, for at most about 20 s. */
static void poll_until(volatile int *flag, const char *what)
{
    int i;
    for (i = 0; i < 2000 && !*flag; i++) {
        OK(VMI_Wait(10));
    }
    CHECK(*flag, "timed out waiting for %s", what);
}

#endif
