complete -c memring -s p -l port -d 'TCP port to listen on; 0 disables TCP' -r
complete -c memring -s l -l listen -d 'Local IP address to bind' -r
complete -c memring -s s -l server -d 'memcached server, repeatable, at least one (host:port[:weight], [v6]:port)' -r
complete -c memring -s b -l backup -d 'Backup memcached server, repeatable' -r
complete -c memring -l missed-keys-limit -d 'Bytes of missed keys logged per server; past it a rejoin flushes the server instead of deleting its missed keys (0: always flush)' -r
complete -c memring -s n -l max-conns -d 'Max client connections' -r
complete -c memring -s i -l max-server-conns -d 'Max keep-alive connections per memcached server' -r
complete -c memring -s f -l unix-socket -d 'Unix socket path to listen on [default: off]' -r -F
complete -c memring -s a -l unix-mask -d 'Permission bits of the unix socket, in octal [default: as the umask leaves them]' -r
complete -c memring -s u -l user -d 'User to run as (name or uid)' -r
complete -c memring -s g -l group -d 'Group to run as (name or gid)' -r
complete -c memring -l bind -d 'Listen on ADDR:PORT instead of -l/-p; port 0 picks a free port, IPv6 as [::1]:0' -r
complete -c memring -l threads -d 'Runtimes, one per core [default: available cores]' -r
complete -c memring -l distribution -d 'Placement of keys: modula or ketama (-k is --distribution ketama)' -r
complete -c memring -l hash -d 'Key hash as nutcracker names it (fnv1a_64, md5, murmur, ...) [default: magent\'s for modula, md5 for ketama]' -r
complete -c memring -l hash-tag -d 'Hash only the part of a key between these two characters, as nutcracker\'s hash_tag (e.g. "{}")' -r
complete -c memring -l connect-timeout -d 'Timeout for connecting to a server' -r
complete -c memring -l request-timeout -d 'Timeout for a server\'s reply to a request' -r
complete -c memring -l max-item-size -d 'Largest item accepted, like memcached -I (1k..1g)' -r
complete -c memring -l client-buffer -d 'Unsent reply bytes per client before it is not read (1k..1g)' -r
complete -c memring -l max-input-memory -d 'Unparsed client input all clients together may hold; past it the largest partial requests are refused' -r
complete -c memring -l failure-limit -d 'Consecutive failures before a server is taken out (suspect if the last was a timeout)' -r
complete -c memring -l retry-interval -d 'Base interval between probes of a down server' -r
complete -c memring -l dns-refresh -d 'How often server host names are resolved again (0 disables)' -r
complete -c memring -l migrate-window -d 'How long a reload that moves keys reads a missed key from its old owner (0 disables)' -r
complete -c memring -l hedge -d 'Send a read whose primary is late to its backup too (on, off)' -r
complete -c memring -l hedge-budget -d 'Share of reads per core that may be hedged, e.g. 5%' -r
complete -c memring -l hot-keys -d 'Keep a sketch of the hottest keys read: stats hotkeys, Prometheus (on, off)' -r
complete -c memring -l hot-key-threshold -d 'Reads/s above which a key with over 1% of a core\'s reads is spread over primary and backup (0: never)' -r
complete -c memring -l upstream-conns -d 'Pipelined connections per server per core (at most -i)' -r
complete -c memring -l io-backend -d 'I/O backend: auto (io_uring, else epoll), uring, epoll' -r
complete -c memring -l pid-file -d 'Write the process id to PATH' -r -F
complete -c memring -l log-file -d 'Append logs to PATH instead of stderr (reopened on SIGHUP, for logrotate)' -r -F
complete -c memring -l config -d 'TOML config file; flags given here override it; reloaded on SIGHUP' -r -F
complete -c memring -l metrics-listen -d 'Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default)' -r
complete -c memring -l log-level -d 'Log level (error, warn, info, debug, trace); unlike -v it keeps a daemon detached' -r
complete -c memring -l tls-listen -d 'Also serve clients over TLS on ADDR:PORT (with --tls-cert and --tls-key; -p 0 leaves only TLS)' -r
complete -c memring -l tls-cert -d 'The TLS listener\'s certificate chain (PEM); re-read on SIGHUP' -r -F
complete -c memring -l tls-key -d 'The TLS listener\'s private key (PEM); re-read on SIGHUP' -r -F
complete -c memring -l tls-ca -d 'Require TLS clients to present a certificate signed by this CA (PEM)' -r -F
complete -c memring -l tls-handshake-timeout -d 'Cut a TLS client that has not finished its handshake by then' -r
complete -c memring -l server-tls-ca -d 'Verify the servers\' certificates against this CA (PEM) instead of the system\'s' -r -F
complete -c memring -l server-tls-cert -d 'A client certificate (PEM) to present to the servers' -r -F
complete -c memring -l server-tls-key -d 'The private key (PEM) of --server-tls-cert' -r -F
complete -c memring -l route -d 'Print where KEY goes (pool, primary, backup) under this configuration, and exit' -r
complete -c memring -l shutdown-timeout -d 'How long in-flight requests may finish on SIGTERM' -r
complete -c memring -s k -l ketama -d 'Use ketama consistent hashing (default: modula, as magent)'
complete -c memring -l resync -d 'After a server rejoins, copy the keys it owns back from its partners (see README: closes a data-loss window, opens a rare delete race)'
complete -c memring -s D -l foreground -d 'Don\'t go to background'
complete -c memring -s v -l verbose -d 'Verbose: -v info, -vv debug, -vvv trace; implies -D, as in magent'
complete -c memring -s h -l help -d 'Print this help'
complete -c memring -l latency-stats -d 'Record per-command latency for `stats proxy` (implied by --metrics-listen)'
complete -c memring -l server-tls -d 'Speak TLS to every server (primaries and backups)'
complete -c memring -l check -d 'Validate the configuration and exit'
complete -c memring -l version -d 'Print the version'
