package api

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The VMM serves its API with this small HTTP/1.1 server instead of
// net/http: net/http and the TLS stack it pulls in cost about 5 MiB of
// resident memory in every VMM process, against a budget of 5 MiB for the
// whole VMM (DESIGN.md). It speaks what curl and Go's client send: request
// line, headers, an optional Content-Length body, keep-alive. The peer is
// local but untrusted, so every size is bounded.
const (
	maxLineBytes   = 8 << 10  // request line or one header line
	maxHeaderBytes = 16 << 10 // all header lines together
	maxHeaders     = 64
	maxBodyBytes   = 1 << 20 // the largest JSON body the API accepts
	readTimeout    = 30 * time.Second
)

// request is a parsed HTTP request.
type request struct {
	method, path string
	query        map[string]string
	body         []byte
	close        bool
}

// response is what a route returns: a status and a JSON body.
type response struct {
	status int
	body   []byte
}

// errHTTP is a request the server refuses with a status before routing.
type errHTTP struct {
	status int
	msg    string
}

func (e *errHTTP) Error() string { return e.msg }

// readRequest reads one request from br. io.EOF means the peer closed an
// idle connection.
func readRequest(br *bufio.Reader) (*request, error) {
	line, err := readLine(br, maxLineBytes)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 || !strings.HasPrefix(parts[2], "HTTP/1.") || parts[0] == "" || !strings.HasPrefix(parts[1], "/") {
		return nil, &errHTTP{400, fmt.Sprintf("malformed request line %q", truncate(line, 80))}
	}
	r := &request{method: parts[0], query: map[string]string{}, close: parts[2] == "HTTP/1.0"}
	path, rawQuery, _ := strings.Cut(parts[1], "?")
	r.path = path
	for _, kv := range strings.Split(rawQuery, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		r.query[k] = v
	}
	length := 0
	total := 0
	for n := 0; ; n++ {
		h, err := readLine(br, maxLineBytes)
		if err != nil {
			if err == io.EOF {
				err = &errHTTP{400, "connection closed inside the headers"}
			}
			return nil, err
		}
		if h == "" {
			break
		}
		total += len(h)
		if n >= maxHeaders || total > maxHeaderBytes {
			return nil, &errHTTP{431, "request headers too large"}
		}
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return nil, &errHTTP{400, fmt.Sprintf("malformed header %q", truncate(h, 80))}
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			length, err = strconv.Atoi(value)
			if err != nil || length < 0 {
				return nil, &errHTTP{400, fmt.Sprintf("bad Content-Length %q", value)}
			}
			if length > maxBodyBytes {
				return nil, &errHTTP{413, fmt.Sprintf("body of %d bytes, at most %d", length, maxBodyBytes)}
			}
		case "transfer-encoding":
			return nil, &errHTTP{411, "chunked bodies are not accepted: send Content-Length"}
		case "connection":
			switch strings.ToLower(value) {
			case "close":
				r.close = true
			case "keep-alive":
				r.close = false
			}
		}
	}
	if length > 0 {
		r.body = make([]byte, length)
		if _, err := io.ReadFull(br, r.body); err != nil {
			return nil, &errHTTP{400, "connection closed inside the body"}
		}
	}
	return r, nil
}

// readLine reads a CRLF- (or LF-) terminated line of at most max bytes.
func readLine(br *bufio.Reader, max int) (string, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > max {
			return "", &errHTTP{431, "request line or header too long"}
		}
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(buf) > 0 {
			return "", &errHTTP{400, "connection closed mid-line"}
		}
		return "", err
	}
	return string(bytes.TrimRight(buf, "\r\n")), nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

var statusText = map[int]string{
	200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
	411: "Length Required", 413: "Content Too Large", 431: "Request Header Fields Too Large",
	500: "Internal Server Error", 503: "Service Unavailable",
}

func writeResponse(w io.Writer, resp response, close bool) error {
	text := statusText[resp.status]
	if text == "" {
		text = "Status"
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", resp.status, text, len(resp.body))
	if close {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	b.Write(resp.body)
	_, err := w.Write(b.Bytes())
	return err
}

// httpServer serves a router on a listener until shut down.
type httpServer struct {
	route func(*request) response

	mu       sync.Mutex
	conns    map[net.Conn]bool // true while a request on it is in flight
	closing  bool
	inflight sync.WaitGroup
}

func newHTTPServer(route func(*request) response) *httpServer {
	return &httpServer{route: route, conns: map[net.Conn]bool{}}
}

// serve accepts connections until the listener closes.
func (s *httpServer) serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = false
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

func (s *httpServer) serveConn(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReaderSize(c, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(readTimeout))
		req, err := readRequest(br)
		if err != nil {
			var he *errHTTP
			if errors.As(err, &he) {
				_ = writeResponse(c, jsonError(he.status, he.msg), true)
			}
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			_ = writeResponse(c, jsonError(503, "the VMM is shutting down"), true)
			return
		}
		s.conns[c] = true
		s.inflight.Add(1)
		s.mu.Unlock()
		resp := s.route(req)
		err = writeResponse(c, resp, req.close)
		s.mu.Lock()
		s.conns[c] = false
		closing := s.closing
		s.mu.Unlock()
		s.inflight.Done()
		if err != nil || req.close || closing {
			return
		}
	}
}

// shutdown stops accepting, lets in-flight requests finish (up to
// timeout), and closes every connection.
func (s *httpServer) shutdown(l net.Listener, timeout time.Duration) {
	s.mu.Lock()
	s.closing = true
	for c, busy := range s.conns {
		if !busy {
			c.Close()
		}
	}
	s.mu.Unlock()
	l.Close()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}
