package host

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/kindlingvm/kindling/agent/api"
)

// Listen is where kindlingd serves.
type Listen struct {
	// Socket is the Unix socket path (mode SocketMode, default 0660);
	// its directory is created 0750.
	Socket     string
	SocketMode os.FileMode
	// SocketGroup, if set, owns the socket (a numeric gid or a group name).
	SocketGroup string
	// TCP, if set, is a host:port served only with mutual TLS: TLSCert
	// and TLSKey are the server's, TLSClientCA verifies clients.
	TCP                          string
	TLSCert, TLSKey, TLSClientCA string
	MetricsAddr                  string
	DrainTimeout                 time.Duration
}

// Server is kindlingd's gRPC front: the Kindling service, grpc.health.v1
// and server reflection, on a Unix socket and optionally TCP with mTLS,
// plus Prometheus metrics over HTTP.
type Server struct {
	d       *Daemon
	cfg     Listen
	grpc    *grpc.Server
	health  *health.Server
	lns     []net.Listener
	metrics *http.Server
	// metricsAddr is where metrics are served (the port chosen for ":0").
	metricsAddr string
}

// MetricsAddr is the metrics listener's address, or "".
func (s *Server) MetricsAddr() string { return s.metricsAddr }

// NewServer listens on everything cfg names. It fails, naming the flag,
// before anything is served: TCP without certificates is refused.
func NewServer(d *Daemon, cfg Listen) (*Server, error) {
	if cfg.Socket == "" && cfg.TCP == "" {
		return nil, errors.New("nothing to listen on: give --socket or --listen")
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o660
	}
	s := &Server{d: d, cfg: cfg, health: health.NewServer()}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxRecvMsgSize)}
	s.grpc = grpc.NewServer(opts...)
	api.RegisterKindlingServer(s.grpc, d)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	var tcpCreds credentials.TransportCredentials
	if cfg.TCP != "" {
		var err error
		if tcpCreds, err = mutualTLS(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.Socket != "" {
		ln, err := listenUnix(cfg.Socket, cfg.SocketMode, cfg.SocketGroup)
		if err != nil {
			return nil, err
		}
		s.lns = append(s.lns, ln)
	}
	if cfg.TCP != "" {
		ln, err := net.Listen("tcp", cfg.TCP)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("--listen %s: %w", cfg.TCP, err)
		}
		s.lns = append(s.lns, credentialsListener{ln, tcpCreds})
	}
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("--metrics-addr %s: %w", cfg.MetricsAddr, err)
		}
		s.metricsAddr = ln.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(d.Registry(), promhttp.HandlerOpts{}))
		s.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go s.metrics.Serve(ln)
	}
	return s, nil
}

// Addrs are the addresses being served (for logs and tests).
func (s *Server) Addrs() []string {
	var a []string
	for _, ln := range s.lns {
		a = append(a, ln.Addr().Network()+":"+ln.Addr().String())
	}
	return a
}

func (s *Server) closeListeners() {
	for _, ln := range s.lns {
		ln.Close()
	}
}

// Serve serves until ctx ends (SIGTERM), then drains: health turns
// NOT_SERVING, new invocations are refused, in-flight ones get up to
// DrainTimeout, and systemd is told at each step.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, len(s.lns))
	for _, ln := range s.lns {
		go func() {
			if tl, ok := ln.(credentialsListener); ok {
				// TCP gets its own server so that only it requires TLS.
				g := grpc.NewServer(grpc.Creds(tl.creds), grpc.MaxRecvMsgSize(MaxRecvMsgSize))
				api.RegisterKindlingServer(g, s.d)
				healthpb.RegisterHealthServer(g, s.health)
				reflection.Register(g)
				go func() { <-ctx.Done(); g.GracefulStop() }()
				errc <- g.Serve(tl.Listener)
				return
			}
			errc <- s.grpc.Serve(ln)
		}()
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(api.Kindling_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
	stopWatchdog := s.watchdog()
	defer stopWatchdog()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	s.health.Shutdown()
	sddaemon.SdNotify(false, sddaemon.SdNotifyStopping+"\nSTATUS=draining in-flight invocations")
	timeout := s.cfg.DrainTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	dctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := s.d.Drain(dctx)
	if err != nil {
		s.d.log.Warn("drain deadline passed", "error", err)
	}
	// Streams of invocations still running end here; their results stay
	// with the sandboxes for the next kindlingd.
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		s.grpc.Stop()
	}
	if s.metrics != nil {
		s.metrics.Close()
	}
	return nil
}

// watchdog pings systemd's watchdog at half its interval while the state
// store answers: a wedged store stops the pings and systemd restarts us.
func (s *Server) watchdog() func() {
	every, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || every == 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every / 2)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := s.d.store.db.View(func(*bolt.Tx) error { return nil }); err == nil {
					sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog)
				}
			}
		}
	}()
	return func() { close(done) }
}

// listenUnix listens on path with mode, replacing a stale socket (one
// that nobody answers on) and refusing to steal a live one.
func listenUnix(path string, mode os.FileMode, group string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("--socket %s: %w", path, err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--socket %s exists and is not a socket; remove it or choose another path", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("--socket %s: another kindlingd is serving there", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("--socket %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--socket %s: %w", path, err)
	}
	if group != "" {
		gid, err := lookupGroup(group)
		if err == nil {
			err = os.Chown(path, -1, gid)
		}
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("--socket-group %s: %w", group, err)
		}
	}
	return ln, nil
}

func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil {
		return n, nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(grp.Gid)
}

// mutualTLS builds the TCP listener's credentials; all three files are
// required.
func mutualTLS(cfg Listen) (credentials.TransportCredentials, error) {
	if cfg.TLSCert == "" || cfg.TLSKey == "" || cfg.TLSClientCA == "" {
		return nil, fmt.Errorf("--listen %s needs mutual TLS: give --tls-cert, --tls-key and --tls-client-ca (kindlingd never serves plain TCP)", cfg.TCP)
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	pem, err := os.ReadFile(cfg.TLSClientCA)
	if err != nil {
		return nil, fmt.Errorf("--tls-client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificates in it", cfg.TLSClientCA)
	}
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}), nil
}

// credentialsListener marks the TCP listener and carries its TLS.
type credentialsListener struct {
	net.Listener
	creds credentials.TransportCredentials
}
