#!/usr/bin/env python3
"""Generate docker/seccomp-io_uring.json: Docker's default seccomp policy plus io_uring.

How the profile is derived (nothing here is copied from Docker's default.json):

1. Start from every x86_64 system call name (SYSCALLS_X86_64 below: the kernel's
   arch/x86/entry/syscalls/syscall_64.tbl, "common" and "64" entries, up to
   Linux 6.17; x32-only entries are left out).
2. Apply the semantics Docker documents for its default profile
   (https://docs.docker.com/engine/security/seccomp/): the default action is
   SCMP_ACT_ERRNO (EPERM), and the profile is an allowlist that leaves out
     - the "significant syscalls blocked by the default profile" table
       (DOCUMENTED_BLOCKED),
     - obsolete or never-implemented entries that no program needs (UNUSED),
     - migrate_pages, the same operation as the documented move_pages,
     - calls that are only allowed when the container holds a capability
       (CAP_CONDITIONAL); like Docker, they are emitted as rules with
       "includes": {"caps": [...]}, so `--cap-add` keeps its usual meaning,
     - calls Docker allows only with argument filters: clone without namespace
       flags, clone3 answered with ENOSYS so that glibc falls back to clone,
       personality for a few harmless personas, socket without AF_VSOCK.
3. Add io_uring_setup, io_uring_enter and io_uring_register. Docker >= 25
   blocks them by default; memring needs them.

The output is x86_64 only (archMap has no sub-architectures): i386 and x32
system calls fall to the default action. It is meant for memring, a 64-bit
static binary, not as a general replacement for Docker's profile. For very new
system calls it can differ from the profile of a particular Docker release in
either direction: it follows the documented table where Docker's own list has
moved on (e.g. clock_adjtime, name_to_handle_at and, on kernels >= 4.8,
ptrace stay blocked here), and it allows system calls added after Linux 6.1
(cachestat, fchmodat2, futex_wake, mseal, ...) that older Docker releases do
not know. The blocked and conditional sets are what matters; they are below.

Usage:
    python3 docker/gen-seccomp.py > docker/seccomp-io_uring.json
    python3 docker/gen-seccomp.py --without-io-uring   # Docker >= 25 default, for tests
    python3 docker/gen-seccomp.py --check docker/seccomp-io_uring.json
"""

import argparse
import json
import sys

# Name and number of every x86_64 system call (common + 64-bit ABI).
SYSCALLS_X86_64 = """
0 read 1 write 2 open 3 close 4 stat 5 fstat 6 lstat 7 poll 8 lseek 9 mmap
10 mprotect 11 munmap 12 brk 13 rt_sigaction 14 rt_sigprocmask
15 rt_sigreturn 16 ioctl 17 pread64 18 pwrite64 19 readv 20 writev
21 access 22 pipe 23 select 24 sched_yield 25 mremap 26 msync 27 mincore
28 madvise 29 shmget 30 shmat 31 shmctl 32 dup 33 dup2 34 pause
35 nanosleep 36 getitimer 37 alarm 38 setitimer 39 getpid 40 sendfile
41 socket 42 connect 43 accept 44 sendto 45 recvfrom 46 sendmsg 47 recvmsg
48 shutdown 49 bind 50 listen 51 getsockname 52 getpeername 53 socketpair
54 setsockopt 55 getsockopt 56 clone 57 fork 58 vfork 59 execve 60 exit
61 wait4 62 kill 63 uname 64 semget 65 semop 66 semctl 67 shmdt 68 msgget
69 msgsnd 70 msgrcv 71 msgctl 72 fcntl 73 flock 74 fsync 75 fdatasync
76 truncate 77 ftruncate 78 getdents 79 getcwd 80 chdir 81 fchdir
82 rename 83 mkdir 84 rmdir 85 creat 86 link 87 unlink 88 symlink
89 readlink 90 chmod 91 fchmod 92 chown 93 fchown 94 lchown 95 umask
96 gettimeofday 97 getrlimit 98 getrusage 99 sysinfo 100 times 101 ptrace
102 getuid 103 syslog 104 getgid 105 setuid 106 setgid 107 geteuid
108 getegid 109 setpgid 110 getppid 111 getpgrp 112 setsid 113 setreuid
114 setregid 115 getgroups 116 setgroups 117 setresuid 118 getresuid
119 setresgid 120 getresgid 121 getpgid 122 setfsuid 123 setfsgid
124 getsid 125 capget 126 capset 127 rt_sigpending 128 rt_sigtimedwait
129 rt_sigqueueinfo 130 rt_sigsuspend 131 sigaltstack 132 utime 133 mknod
134 uselib 135 personality 136 ustat 137 statfs 138 fstatfs 139 sysfs
140 getpriority 141 setpriority 142 sched_setparam 143 sched_getparam
144 sched_setscheduler 145 sched_getscheduler 146 sched_get_priority_max
147 sched_get_priority_min 148 sched_rr_get_interval 149 mlock 150 munlock
151 mlockall 152 munlockall 153 vhangup 154 modify_ldt 155 pivot_root
156 _sysctl 157 prctl 158 arch_prctl 159 adjtimex 160 setrlimit 161 chroot
162 sync 163 acct 164 settimeofday 165 mount 166 umount2 167 swapon
168 swapoff 169 reboot 170 sethostname 171 setdomainname 172 iopl
173 ioperm 174 create_module 175 init_module 176 delete_module
177 get_kernel_syms 178 query_module 179 quotactl 180 nfsservctl
181 getpmsg 182 putpmsg 183 afs_syscall 184 tuxcall 185 security
186 gettid 187 readahead 188 setxattr 189 lsetxattr 190 fsetxattr
191 getxattr 192 lgetxattr 193 fgetxattr 194 listxattr 195 llistxattr
196 flistxattr 197 removexattr 198 lremovexattr 199 fremovexattr
200 tkill 201 time 202 futex 203 sched_setaffinity 204 sched_getaffinity
205 set_thread_area 206 io_setup 207 io_destroy 208 io_getevents
209 io_submit 210 io_cancel 211 get_thread_area 212 lookup_dcookie
213 epoll_create 214 epoll_ctl_old 215 epoll_wait_old 216 remap_file_pages
217 getdents64 218 set_tid_address 219 restart_syscall 220 semtimedop
221 fadvise64 222 timer_create 223 timer_settime 224 timer_gettime
225 timer_getoverrun 226 timer_delete 227 clock_settime 228 clock_gettime
229 clock_getres 230 clock_nanosleep 231 exit_group 232 epoll_wait
233 epoll_ctl 234 tgkill 235 utimes 236 vserver 237 mbind
238 set_mempolicy 239 get_mempolicy 240 mq_open 241 mq_unlink
242 mq_timedsend 243 mq_timedreceive 244 mq_notify 245 mq_getsetattr
246 kexec_load 247 waitid 248 add_key 249 request_key 250 keyctl
251 ioprio_set 252 ioprio_get 253 inotify_init 254 inotify_add_watch
255 inotify_rm_watch 256 migrate_pages 257 openat 258 mkdirat 259 mknodat
260 fchownat 261 futimesat 262 newfstatat 263 unlinkat 264 renameat
265 linkat 266 symlinkat 267 readlinkat 268 fchmodat 269 faccessat
270 pselect6 271 ppoll 272 unshare 273 set_robust_list 274 get_robust_list
275 splice 276 tee 277 sync_file_range 278 vmsplice 279 move_pages
280 utimensat 281 epoll_pwait 282 signalfd 283 timerfd_create 284 eventfd
285 fallocate 286 timerfd_settime 287 timerfd_gettime 288 accept4
289 signalfd4 290 eventfd2 291 epoll_create1 292 dup3 293 pipe2
294 inotify_init1 295 preadv 296 pwritev 297 rt_tgsigqueueinfo
298 perf_event_open 299 recvmmsg 300 fanotify_init 301 fanotify_mark
302 prlimit64 303 name_to_handle_at 304 open_by_handle_at 305 clock_adjtime
306 syncfs 307 sendmmsg 308 setns 309 getcpu 310 process_vm_readv
311 process_vm_writev 312 kcmp 313 finit_module 314 sched_setattr
315 sched_getattr 316 renameat2 317 seccomp 318 getrandom 319 memfd_create
320 kexec_file_load 321 bpf 322 execveat 323 userfaultfd 324 membarrier
325 mlock2 326 copy_file_range 327 preadv2 328 pwritev2 329 pkey_mprotect
330 pkey_alloc 331 pkey_free 332 statx 333 io_pgetevents 334 rseq
424 pidfd_send_signal 425 io_uring_setup 426 io_uring_enter
427 io_uring_register 428 open_tree 429 move_mount 430 fsopen 431 fsconfig
432 fsmount 433 fspick 434 pidfd_open 435 clone3 436 close_range
437 openat2 438 pidfd_getfd 439 faccessat2 440 process_madvise
441 epoll_pwait2 442 mount_setattr 443 quotactl_fd
444 landlock_create_ruleset 445 landlock_add_rule 446 landlock_restrict_self
447 memfd_secret 448 process_mrelease 449 futex_waitv
450 set_mempolicy_home_node 451 cachestat 452 fchmodat2 453 map_shadow_stack
454 futex_wake 455 futex_wait 456 futex_requeue 457 statmount 458 listmount
459 lsm_get_self_attr 460 lsm_set_self_attr 461 lsm_list_modules 462 mseal
463 setxattrat 464 getxattrat 465 listxattrat 466 removexattrat
467 open_tree_attr 468 file_getattr 469 file_setattr
"""

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]

# docs.docker.com/engine/security/seccomp/, "Significant syscalls blocked by
# the default profile" (umount is the i386 name of umount2; stime, vm86 and
# vm86old are i386-only and simply absent from the x86_64 table).
DOCUMENTED_BLOCKED = {
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "clone",
    "create_module", "delete_module", "finit_module", "get_kernel_syms",
    "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind",
    "mount", "move_pages", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "perf_event_open", "personality", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "query_module",
    "quotactl", "reboot", "request_key", "set_mempolicy", "setns",
    "settimeofday", "stime", "swapon", "swapoff", "sysfs", "_sysctl",
    "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat",
    "vm86", "vm86old",
}

# Never implemented on x86_64, or removed long ago.
UNUSED = {
    "afs_syscall", "getpmsg", "putpmsg", "security", "tuxcall", "vserver",
    "epoll_ctl_old", "epoll_wait_old",
}

# Not in the documented table, but the same operation as an entry in it:
# migrate_pages moves another process's pages between NUMA nodes (move_pages).
ALSO_BLOCKED = {"migrate_pages"}

# Calls allowed only when the container holds the capability (Docker's
# "includes": {"caps": ...}). Besides the documented table this covers the
# newer calls that do the same job: the new mount API is `mount`,
# pidfd_getfd/process_madvise act on another process like ptrace, quotactl_fd
# is quotactl, set_mempolicy_home_node is set_mempolicy, and so on.
CAP_CONDITIONAL = {
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_ADMIN": [
        "bpf", "clone", "fanotify_init", "fsconfig", "fsmount", "fsopen",
        "fspick", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
        "name_to_handle_at", "open_tree", "open_tree_attr", "perf_event_open",
        "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns",
        "syslog", "umount2", "unshare",
    ],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": [
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
        "process_vm_writev", "ptrace",
    ],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "clock_settime", "clock_adjtime"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": [
        "get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node",
    ],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}

# clone(2) flags that create namespaces; without CAP_SYS_ADMIN clone may be
# called only with all of them clear.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NS_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
                  | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)

# personality(2) values that are allowed: PER_LINUX, PER_LINUX32, UNAME26,
# UNAME26|PER_LINUX32, and 0xffffffff (query the current persona).
PERSONALITY_OK = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]

AF_VSOCK = 40
EPERM = 1
ENOSYS = 38

# Calls that get dedicated rules below instead of a plain allow.
SPECIAL = {"clone", "clone3", "personality", "socket"}


def all_syscalls():
    """Parse SYSCALLS_X86_64 into {name: number}, checking it for typos."""
    tokens = SYSCALLS_X86_64.split()
    if len(tokens) % 2:
        raise SystemExit("gen-seccomp: odd syscall table")
    table = {}
    for num, name in zip(tokens[0::2], tokens[1::2]):
        if name in table:
            raise SystemExit(f"gen-seccomp: {name} listed twice")
        table[name] = int(num)
    return table


def rule(names, action="SCMP_ACT_ALLOW", args=None, comment="", includes=None,
         excludes=None, errno_ret=None):
    r = {
        "names": sorted(names),
        "action": action,
        "args": args or [],
        "comment": comment,
        "includes": includes or {},
        "excludes": excludes or {},
    }
    if errno_ret is not None:
        r["errnoRet"] = errno_ret
    return r


def build(with_io_uring):
    table = all_syscalls()
    conditional = {n for names in CAP_CONDITIONAL.values() for n in names}
    denied = (DOCUMENTED_BLOCKED | UNUSED | ALSO_BLOCKED | conditional
              | SPECIAL | set(IO_URING))
    for n in denied:
        # A typo would silently block nothing; i386-only names are expected.
        if n not in table and n not in {"stime", "umount", "vm86", "vm86old"}:
            raise SystemExit(f"gen-seccomp: {n} is not an x86_64 syscall")
    allowed = [n for n in table if n not in denied]

    syscalls = [rule(allowed, comment="every x86_64 syscall not blocked, "
                     "capability-conditional or argument-filtered")]
    if with_io_uring:
        syscalls.append(rule(IO_URING, comment="memring: io_uring (blocked "
                             "by Docker's default profile since Docker 25)"))
    syscalls += [
        rule(["clone"], args=[{"index": 0, "value": CLONE_NS_FLAGS,
                               "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
             comment="clone without namespace flags",
             excludes={"caps": ["CAP_SYS_ADMIN"]}),
        rule(["clone3"], action="SCMP_ACT_ERRNO", errno_ret=ENOSYS,
             comment="clone3 cannot be argument-filtered (flags are behind a "
                     "pointer): ENOSYS makes glibc fall back to clone",
             excludes={"caps": ["CAP_SYS_ADMIN"]}),
        rule(["clone3"], comment="clone3 with CAP_SYS_ADMIN",
             includes={"caps": ["CAP_SYS_ADMIN"]}),
    ]
    for persona in PERSONALITY_OK:
        syscalls.append(rule(["personality"], args=[{
            "index": 0, "value": persona, "valueTwo": 0,
            "op": "SCMP_CMP_EQ"}], comment="harmless personas only"))
    syscalls.append(rule(["socket"], args=[{
        "index": 0, "value": AF_VSOCK, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
        comment="every address family but AF_VSOCK"))
    for cap, names in CAP_CONDITIONAL.items():
        syscalls.append(rule(names, comment=f"only with {cap}",
                             includes={"caps": [cap]}))

    return {
        "comment": "Generated by docker/gen-seccomp.py from the documented "
                   "semantics of Docker's default seccomp profile"
                   + (", plus io_uring_setup/enter/register" if with_io_uring
                      else " (Docker >= 25: no io_uring)")
                   + ". Do not edit; regenerate.",
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": []}],
        "syscalls": syscalls,
    }


def render(profile):
    return json.dumps(profile, indent=2) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--without-io-uring", action="store_true",
                    help="leave io_uring out (what Docker >= 25 does by default)")
    ap.add_argument("--check", metavar="FILE",
                    help="exit 1 if FILE differs from the generated profile")
    opts = ap.parse_args()
    out = render(build(not opts.without_io_uring))
    if opts.check:
        with open(opts.check, encoding="utf-8") as f:
            if f.read() != out:
                print(f"{opts.check} is stale: run "
                      "python3 docker/gen-seccomp.py > " + opts.check,
                      file=sys.stderr)
                return 1
        return 0
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
