//! The I/O shell: the only module that touches tokio-uring, tokio, sockets,
//! threads, signals and the clock.
