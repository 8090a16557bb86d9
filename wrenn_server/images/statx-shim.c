/* gVisor releases before 2023 reject statx() with AT_NO_AUTOMOUNT (EINVAL), which coreutils' ls and stat pass
 * on every call. There are no automount points in a capsule, so dropping the flag changes nothing else.
 *
 * Built twice from this file: as a shared library that wraps statx(), and (with -DWRAPPER) as the small program
 * installed in place of ls, dir, vdir and stat, which runs the real one (diverted to <name>.real) with the
 * library preloaded. Only those programs pay for the extra exec; a global ld.so.preload cost every exec ~2 ms. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef WRAPPER
int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
#else
int main(int argc, char **argv)
{
    (void)argc;
    const char *slash = strrchr(argv[0], '/');
    const char *name = slash ? slash + 1 : argv[0];
    char real[256];
    snprintf(real, sizeof real, "/usr/bin/%s.real", name);
    setenv("LD_PRELOAD", "/usr/local/lib/wrenn/libstatx-shim.so", 1);
    execv(real, argv);
    perror(real);
    return 127;
}
#endif
