/*
 * uring-probe: does this (container) sandbox let a process use io_uring?
 *
 * Built statically (see docker/seccomp-probe/build.sh) and run FROM scratch
 * by docker/test.sh to check docker/seccomp-io_uring.json against Docker's
 * default profile. It also starts a thread (glibc >= 2.34 tries clone3 first
 * and falls back to clone only on ENOSYS, so a profile that answers clone3
 * with EPERM breaks every multi-threaded program) and opens a TCP socket.
 *
 * Output: "Seccomp: <mode>" from /proc/self/status (2 = filtered; absent
 * if /proc is not mounted), then "io_uring_setup: ok" or
 * "io_uring_setup: <errno name> (<n>)".
 * Exit status: 0 io_uring usable, 1 io_uring_setup refused with EPERM,
 *              2 refused otherwise (ENOSYS, ...), 3 thread/socket sanity failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/io_uring.h>

static void *thread_main(void *arg) { return arg; }

static void print_seccomp_mode(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "Seccomp:", 8) == 0) {
            fputs(line, stdout);
            break;
        }
    }
    fclose(f);
}

int main(void) {
    print_seccomp_mode();

    pthread_t t;
    int err = pthread_create(&t, NULL, thread_main, NULL);
    if (err != 0) {
        printf("pthread_create: %s (%d)\n", strerror(err), err);
        return 3;
    }
    pthread_join(t, NULL);

    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) {
        printf("socket: %s (%d)\n", strerror(errno), errno);
        return 3;
    }
    close(s);

    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    long fd = syscall(__NR_io_uring_setup, 4, &p);
    if (fd < 0) {
        int e = errno;
        printf("io_uring_setup: %s (%d)\n", e == EPERM ? "EPERM" : strerror(e), e);
        return e == EPERM ? 1 : 2;
    }
    /* io_uring_enter with nothing to submit must succeed too. */
    long r = syscall(__NR_io_uring_enter, (int)fd, 0, 0, 0, NULL, 0);
    if (r < 0) {
        int e = errno;
        printf("io_uring_enter: %s (%d)\n", e == EPERM ? "EPERM" : strerror(e), e);
        return e == EPERM ? 1 : 2;
    }
    close((int)fd);
    printf("io_uring_setup: ok\n");
    return 0;
}
