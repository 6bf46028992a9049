# Shared by the scripts in this folder (sourced, not run).

# Builds the server and the load tool in release mode.
build_release() {
    echo "== building release binaries (cargo build --release -p reckon-charging -p reckon-sim --bins)" >&2
    cargo build --release --quiet -p reckon-charging -p reckon-sim --bins
    RECKON=$PWD/target/release/reckon
    RECKON_SIM=$PWD/target/release/reckon-sim
}

# start_reckon DATA_DIR LOG: starts `reckon serve` on a free loopback port;
# sets RECKON_PID and RECKON_ADDR.
start_reckon() {
    local data=$1 log=$2
    RECKON_LOG=${RECKON_LOG:-warn,reckon_charging::server=info} "$RECKON" serve --data-dir "$data" --listen 127.0.0.1:0 2>"$log" &
    RECKON_PID=$!
    RECKON_ADDR=
    for _ in $(seq 1 600); do
        RECKON_ADDR=$(sed -n 's/^reckon listening on \(.*\)$/\1/p' "$log" | head -n 1)
        [ -n "$RECKON_ADDR" ] && break
        if ! kill -0 "$RECKON_PID" 2>/dev/null; then
            echo "reckon serve exited:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    if [ -z "$RECKON_ADDR" ]; then
        echo "reckon serve did not start listening within 60 s:" >&2
        cat "$log" >&2
        return 1
    fi
    echo "== reckon serve pid $RECKON_PID listening on $RECKON_ADDR, data in $data" >&2
}

# stop_pid PID [NAME]: SIGTERM, then wait up to 60 s for it to exit (kill -9 after).
stop_pid() {
    local pid=$1 name=${2:-process}
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "$name (pid $pid) did not stop within 60 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# free_port FROM: the first loopback TCP port from FROM on that nothing listens on.
free_port() {
    local p
    for p in $(seq "$1" $(($1 + 1000))); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
