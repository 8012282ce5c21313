/* Links libella and prints its version: the smallest check that the C ABI is usable. */
#include <stdio.h>
#include <string.h>

#include "ella.h"

int main(void) {
    const char *version = ella_version();
    char expected[32];
    snprintf(expected, sizeof expected, "%u.%u.%u", ELLA_VERSION_MAJOR, ELLA_VERSION_MINOR,
             ELLA_VERSION_PATCH);
    printf("libella %s\n", version);
    if (strcmp(version, expected) != 0) {
        fprintf(stderr, "library %s does not match header %s\n", version, expected);
        return 1;
    }
    return 0;
}
