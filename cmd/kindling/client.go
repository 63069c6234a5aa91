package main

// The commands that are clients of kindlingd, the host agent: how they
// find it (--socket, or --addr with mutual TLS), the one place that dials
// it, and how its errors read.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kindlingvm/kindling/agent/api"
)

// defaultSocket is where kindlingd listens unless told otherwise (its
// systemd unit's RuntimeDirectory=kindling).
const defaultSocket = "/run/kindling/kindlingd.sock"

// rpcTimeout bounds a unary call. Registering checks the image's digests
// and deleting stops instances, so it is generous; Invoke has none (the
// function's own timeout bounds it).
const rpcTimeout = time.Minute

// daemonCLI runs the commands that talk to kindlingd. It writes to its own
// stdout and stderr so that tests can run it in process.
type daemonCLI struct {
	stdout, stderr io.Writer
	conn           connFlags
}

func newDaemonCLI(stdout, stderr io.Writer, getenv func(string) string) *daemonCLI {
	sock := getenv("KINDLING_SOCKET")
	if sock == "" {
		sock = defaultSocket
	}
	return &daemonCLI{stdout: stdout, stderr: stderr, conn: connFlags{socket: sock}}
}

// connFlags says where kindlingd is. Every daemon command takes them,
// before or after its name.
type connFlags struct {
	socket                 string
	addr                   string
	tlsCert, tlsKey, tlsCA string
}

// register adds the connection flags to fs, defaulting to what is set so
// far (the environment, or flags given before the command).
func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.socket, "socket", c.socket, "kindlingd's Unix socket `path` (the default is $KINDLING_SOCKET if set)")
	fs.StringVar(&c.addr, "addr", c.addr, "reach kindlingd over TCP at `host:port` instead, with mutual TLS")
	fs.StringVar(&c.tlsCert, "tls-cert", c.tlsCert, "client certificate `file` (PEM) for --addr")
	fs.StringVar(&c.tlsKey, "tls-key", c.tlsKey, "client private key `file` (PEM) for --addr")
	fs.StringVar(&c.tlsCA, "tls-ca", c.tlsCA, "CA certificate `file` (PEM) that signed kindlingd's certificate, for --addr")
}

// globalFlags takes the connection flags given before the command.
func (d *daemonCLI) globalFlags(args []string) ([]string, error) {
	if len(args) == 0 || !strings.HasPrefix(args[0], "-") {
		return args, nil
	}
	switch args[0] {
	case "-h", "-help", "--help":
		return args, nil
	}
	fs := flag.NewFlagSet("kindling", flag.ContinueOnError)
	fs.SetOutput(d.stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage) }
	d.conn.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	return fs.Args(), nil
}

// flagSet is a daemon command's flag set: its output goes to d.stderr, and
// it takes the connection flags.
func (d *daemonCLI) flagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(d.stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	d.conn.register(fs)
	return fs
}

// badInput prints err as the one line it is and exits 2, as badInput does
// for the commands that write to os.Stderr.
func (d *daemonCLI) badInput(err error) error {
	fmt.Fprintf(d.stderr, "kindling: %v\n", err)
	return exitError{2}
}

// printProto writes m as indented protojson, zero fields included so that
// scripts see every field.
func (d *daemonCLI) printProto(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = d.stdout.Write(append(b, '\n'))
	return err
}

// daemonConn is a client connection to kindlingd.
type daemonConn struct {
	api.KindlingClient
	cc *grpc.ClientConn
	// where and hint name kindlingd in "cannot reach" errors.
	where, hint string

	mu      sync.Mutex
	dialErr error // the last dial's error; nil once one succeeds
}

// dial connects to kindlingd as the connection flags say: over the Unix
// socket without TLS (the socket's file mode is the access control), or
// over TCP with mutual TLS. It is the only place that dials. The
// connection is made by the first call; its errors come back through
// daemonConn.fail.
func (d *daemonCLI) dial() (*daemonConn, error) {
	c := d.conn
	dc := &daemonConn{}
	var target, network, path string
	var creds credentials.TransportCredentials
	if c.addr != "" {
		var missing []string
		for _, f := range []struct{ name, v string }{{"--tls-cert", c.tlsCert}, {"--tls-key", c.tlsKey}, {"--tls-ca", c.tlsCA}} {
			if f.v == "" {
				missing = append(missing, f.name)
			}
		}
		if len(missing) > 0 {
			return nil, d.badInput(fmt.Errorf("--addr needs --tls-cert, --tls-key and --tls-ca: kindlingd's TCP listener takes only mutual TLS (missing %s)", strings.Join(missing, ", ")))
		}
		if _, _, err := net.SplitHostPort(c.addr); err != nil {
			return nil, d.badInput(fmt.Errorf("--addr %q: want HOST:PORT", c.addr))
		}
		tc, err := clientTLS(c.tlsCert, c.tlsKey, c.tlsCA)
		if err != nil {
			return nil, d.badInput(err)
		}
		target, network, creds = "dns:///"+c.addr, "tcp", credentials.NewTLS(tc)
		dc.where, dc.hint = c.addr, "is it running and listening there? check --addr"
	} else {
		for _, f := range []struct{ name, v string }{{"--tls-cert", c.tlsCert}, {"--tls-key", c.tlsKey}, {"--tls-ca", c.tlsCA}} {
			if f.v != "" {
				return nil, d.badInput(fmt.Errorf("%s applies only with --addr: the Unix socket takes no TLS", f.name))
			}
		}
		if c.socket == "" {
			return nil, d.badInput(errors.New("--socket is empty: name kindlingd's socket, or unset KINDLING_SOCKET for " + defaultSocket))
		}
		abs, err := filepath.Abs(c.socket)
		if err != nil {
			return nil, d.badInput(fmt.Errorf("--socket %s: %w", c.socket, err))
		}
		target, network, path, creds = "unix://"+abs, "unix", abs, insecure.NewCredentials()
		dc.where, dc.hint = c.socket, "is it running? `systemctl status kindlingd`, or pass --socket"
	}
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		if network == "unix" {
			// gRPC hands a custom dialer the target ("unix:///..."), not the path.
			addr = path
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		dc.mu.Lock()
		dc.dialErr = err
		dc.mu.Unlock()
		return conn, err
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds), grpc.WithContextDialer(dialer))
	if err != nil {
		return nil, fmt.Errorf("kindlingd at %s: %w", dc.where, err)
	}
	dc.cc, dc.KindlingClient = cc, api.NewKindlingClient(cc)
	return dc, nil
}

func (dc *daemonConn) Close() error { return dc.cc.Close() }

// clientTLS is the mutual-TLS configuration for --addr.
func clientTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert %s, --tls-key %s: %w", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// fail turns a call's error into the line the user reads: kindlingd's
// status message (which names the field or the cause) and the code's
// name, or why kindlingd could not be reached.
func (dc *daemonConn) fail(verb string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", verb, err)
	}
	switch st.Code() {
	case codes.Unavailable:
		dc.mu.Lock()
		de := dc.dialErr
		dc.mu.Unlock()
		if de != nil {
			var oe *net.OpError
			if errors.As(de, &oe) {
				de = oe.Err // "connect: no such file or directory", without the path again
			}
			return fmt.Errorf("cannot reach kindlingd at %s: %v (%s)", dc.where, de, dc.hint)
		}
		// A failed TLS handshake, on either side, after the dial succeeded.
		if m := st.Message(); strings.Contains(m, "handshake failed") || strings.Contains(m, "tls: ") {
			return fmt.Errorf("cannot reach kindlingd at %s: %s (check --tls-cert, --tls-key and --tls-ca)", dc.where, st.Message())
		}
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: kindlingd at %s did not answer within %v (%s)", verb, dc.where, rpcTimeout, st.Message())
	}
	return fmt.Errorf("%s: %s (%s)", verb, st.Message(), st.Code())
}

// call runs one unary call with rpcTimeout.
func call[Req, Resp any](dc *daemonConn, verb string, f func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := f(ctx, req)
	if err != nil {
		return resp, dc.fail(verb, err)
	}
	return resp, nil
}

// ms formats a phase given in microseconds.
func ms(us int64) string { return fmt.Sprintf("%.1f ms", float64(us)/1e3) }

// msDuration is a spec's millisecond field as a duration.
func msDuration(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }

// startKind is how an instance started: warm, restore or cold ("" when
// none did).
func startKind(k api.StartKind) string {
	if k == api.StartKind_START_KIND_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(k.String())
}

// orDash fills an empty table cell.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// unixTime formats a Unix-nanosecond time, or "-" for none.
func unixTime(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, ns).Format("2006-01-02 15:04:05.000 MST")
}
