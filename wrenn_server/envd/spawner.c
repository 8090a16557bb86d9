/*
 * wrenn-spawn: starts processes for envd, and reports when they exit.
 *
 * Why it exists: a process start from Python costs ~5.7 ms under gVisor here, ~2.5 ms of which are the
 * ~64 rt_sigaction calls Python's vfork child makes to reset the handlers it shares with the interpreter
 * (every system call is a trap into gVisor, ~50 us each). This helper installs no signal handler a child could
 * inherit, so its child makes only the calls the start needs.
 *
 * Usage: wrenn-spawn REQUEST_FD EVENTS_FD [OOM_SCORE]
 *   REQUEST_FD (stream socket): envd writes a request, with the child's stdin, stdout and stderr attached as
 *   SCM_RIGHTS, and reads back a reply. EVENTS_FD (stream socket): the helper writes one record per child that
 *   exits. Both layouts are `struct request`, `struct reply` and `struct exited` below, in native byte order;
 *   wrenn_server/envd/spawn.py is the other side. The helper exits when envd closes REQUEST_FD.
 *   OOM_SCORE: the helper's own oom_score_adj, which its children inherit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define FLAG_TERMINAL 1u /* make stdin (a pty slave) the controlling terminal */
#define FLAG_SWITCH_USER 2u

enum step { STEP_NONE, STEP_CHDIR, STEP_EXEC, STEP_USER, STEP_FORK, STEP_OTHER };

struct request {
    uint32_t size; /* bytes after this header: groups, then NUL-terminated exe, cwd, argv..., env... */
    uint32_t flags;
    uint32_t uid, gid, ngroups, argc, envc;
};

struct reply {
    int32_t pid, err, step;
};

struct exited {
    int32_t pid, status;
};

static volatile int child_err, child_step; /* written by the vfork child, which shares our memory */

/* Children started and not yet reaped: the reaper thread sleeps while there are none (waitpid would fail). */
static pthread_mutex_t children_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t children_started = PTHREAD_COND_INITIALIZER;
static unsigned children;

static int read_exact(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_exact(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void set_oom_score(int score) {
    char text[16];
    int len = 0, value = score < 0 ? -score : score;
    char digits[12];
    do { digits[len++] = (char)('0' + value % 10); value /= 10; } while (value);
    int at = 0;
    if (score < 0) text[at++] = '-';
    while (len) text[at++] = digits[--len];
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, text, (size_t)at) < 0) { /* best effort, as for envd's own score */ }
        close(fd);
    }
}

/* Runs in the vfork child: only system calls, no allocation, never returns. */
static void child(const struct request *req, const gid_t *groups, const int *stdio, const char *exe,
                  const char *cwd, char *const *argv, char *const *envp) {
    int step = STEP_OTHER;
    if (setsid() < 0) goto fail;
    for (int fd = 0; fd < 3; fd++)
        if (dup2(stdio[fd], fd) < 0) goto fail;
    if ((req->flags & FLAG_TERMINAL) && ioctl(0, TIOCSCTTY, 0) < 0) goto fail;
    if (req->flags & FLAG_SWITCH_USER) {
        step = STEP_USER;
        if (setgroups(req->ngroups, groups) < 0 || setgid(req->gid) < 0 || setuid(req->uid) < 0) goto fail;
    }
    step = STEP_CHDIR;
    if (chdir(cwd) < 0) goto fail;
    step = STEP_EXEC;
    execve(exe, argv, envp);
fail:
    child_err = errno;
    child_step = step;
    _exit(127);
}

static struct reply start(int sock) {
    struct reply out = {0, 0, STEP_OTHER};
    struct request req;
    int stdio[3] = {-1, -1, -1};
    char control[CMSG_SPACE(sizeof stdio)];
    struct iovec iov = {&req, sizeof req};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t got;
    do got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL); while (got < 0 && errno == EINTR);
    if (got <= 0) exit(0); /* envd closed its end: nothing more to start */
    if ((size_t)got < sizeof req && read_exact(sock, (char *)&req + got, sizeof req - (size_t)got) < 0) exit(1);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(sizeof stdio))
        memcpy(stdio, CMSG_DATA(cm), sizeof stdio);
    char *data = malloc(req.size + 1);
    char **argv = calloc(req.argc + 1, sizeof *argv);
    char **envp = calloc(req.envc + 1, sizeof *envp);
    if (!data || !argv || !envp || read_exact(sock, data, req.size) < 0) exit(1);
    data[req.size] = 0;
    size_t groups_len = req.ngroups * sizeof(uint32_t);
    if (stdio[0] < 0 || stdio[1] < 0 || stdio[2] < 0 || groups_len > req.size) {
        out.err = EINVAL;
        goto done;
    }
    gid_t *groups = (gid_t *)data;
    char *p = data + groups_len, *end = data + req.size;
    const char *exe = p;
    p += strnlen(p, (size_t)(end - p)) + 1;
    const char *cwd = p;
    for (uint32_t i = 0; i < req.argc + req.envc + 1; i++) {
        if (p >= end) { out.err = EINVAL; goto done; }
        if (i > 0) {
            if (i <= req.argc) argv[i - 1] = p;
            else envp[i - 1 - req.argc] = p;
        }
        p += strnlen(p, (size_t)(end - p)) + 1;
    }
    child_err = 0;
    child_step = STEP_NONE;
    pid_t pid = vfork();
    if (pid == 0) child(&req, groups, stdio, exe, cwd, argv, envp);
    if (pid < 0) {
        out.err = errno;
        out.step = STEP_FORK;
        goto done;
    }
    pthread_mutex_lock(&children_lock);
    children++;
    pthread_cond_signal(&children_started);
    pthread_mutex_unlock(&children_lock);
    if (child_err) { /* the reaper reaps it; envd never heard of its pid */
        out.err = child_err;
        out.step = child_step;
    } else {
        out.pid = pid;
        out.step = STEP_NONE;
    }
done:
    for (int i = 0; i < 3; i++)
        if (stdio[i] >= 0) close(stdio[i]);
    free(data);
    free(argv);
    free(envp);
    return out;
}

/* Blocked in waitpid, the thread hears of an exit without a signal being delivered: under gVisor each signal
 * and system call is a trap, and SIGCHLD plus a wake-up pipe cost several of them per child. */
static void *report_exits(void *arg) {
    int events = *(int *)arg;
    for (;;) {
        pthread_mutex_lock(&children_lock);
        while (children == 0) pthread_cond_wait(&children_started, &children_lock);
        pthread_mutex_unlock(&children_lock);
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            exit(1);
        }
        pthread_mutex_lock(&children_lock);
        children--;
        pthread_mutex_unlock(&children_lock);
        struct exited record = {pid, status};
        if (write_exact(events, &record, sizeof record) < 0) exit(1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) return 2;
    /* Set once here, the children's score is inherited: three system calls fewer per child. */
    if (argc == 4) set_oom_score(atoi(argv[3]));
    static int sock, events;
    signal(SIGCHLD, SIG_DFL); /* not ignored: ignored children would be reaped by no one we could hear */
    sock = atoi(argv[1]);
    events = atoi(argv[2]);
    /* Inherited without close-on-exec; the children must not hold envd's sockets. */
    if (fcntl(sock, F_SETFD, FD_CLOEXEC) < 0 || fcntl(events, F_SETFD, FD_CLOEXEC) < 0) return 1;
    pthread_t reaper;
    if (pthread_create(&reaper, NULL, report_exits, &events) != 0) return 1;
    for (;;) {
        struct reply out = start(sock);
        if (write_exact(sock, &out, sizeof out) < 0) return 1;
    }
}
