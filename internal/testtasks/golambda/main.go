// Command golambda is an aws-lambda-go handler for the guest agent's
// tests: {"op": "echo"|"error"|"panic"|"sleep"|"exit"|"big"|"count"|"net", ...}.
// "net" reports the sandbox's interfaces and whether it has a default route.
// "count" appends a line to $KINDLING_TEST_COUNTER_DIR/<invocation ID>, a
// side effect the tests count to prove each ID ran exactly once.
//
// With KINDLING_HTTP_ADDR set it is no Lambda function but an HTTP server
// on that address that runs the same handler for each POST /: the floor
// kindling-bench --invoke measures kindlingd's invocation path against.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type request struct {
	Op   string `json:"op"`
	Text string `json:"text"`
	MS   int    `json:"ms"`
	Size int    `json:"size"`
}

type response struct {
	Text string `json:"text"`
	Len  int    `json:"len"`
}

func handle(ctx context.Context, r request) (response, error) {
	switch r.Op {
	case "echo":
		fmt.Println("echo", len(r.Text))
		return response{Text: r.Text, Len: len(r.Text)}, nil
	case "error":
		return response{}, errors.New("handler says no")
	case "panic":
		panic("handler panicked")
	case "sleep":
		time.Sleep(time.Duration(r.MS) * time.Millisecond)
		return response{Text: "slept"}, nil
	case "exit":
		os.Exit(3)
	case "count":
		lc, _ := lambdacontext.FromContext(ctx)
		f, err := os.OpenFile(os.Getenv("KINDLING_TEST_COUNTER_DIR")+"/"+lc.AwsRequestID, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return response{}, err
		}
		defer f.Close()
		fmt.Fprintln(f, os.Getpid())
		time.Sleep(time.Duration(r.MS) * time.Millisecond)
		return response{Text: lc.AwsRequestID}, nil
	case "big":
		return response{Text: strings.Repeat("x", r.Size)}, nil
	case "net":
		return response{Text: netReport()}, nil
	}
	return response{}, fmt.Errorf("unknown op %q", r.Op)
}

// netReport describes the sandbox's network: its interfaces and
// addresses, and whether an outside address has a route (a UDP connect
// sends nothing, it only picks the route).
func netReport() string {
	var parts []string
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		var as []string
		for _, a := range addrs {
			as = append(as, a.String())
		}
		parts = append(parts, ifc.Name+"="+strings.Join(as, ","))
	}
	route := "ok"
	if c, err := net.Dial("udp4", "192.0.2.1:9"); err != nil {
		route = "none"
	} else {
		c.Close()
	}
	return strings.Join(parts, " ") + " route=" + route
}

func main() {
	if addr := os.Getenv("KINDLING_HTTP_ADDR"); addr != "" {
		err := http.ListenAndServe(addr, http.HandlerFunc(serveInvoke))
		fmt.Fprintln(os.Stderr, "golambda:", err)
		os.Exit(1)
	}
	lambda.Start(handle)
}

// maxPayload is the Lambda limit on a synchronous invocation's event,
// which kindlingd enforces too.
const maxPayload = 6 << 20

// requestIDs numbers the HTTP invocations that bring no request ID.
var requestIDs atomic.Uint64

// serveInvoke runs handle for one POST /: the body is the event, the
// answer the handler's JSON response, or with status 500 the Lambda error
// document aws-lambda-go would have sent. The request ID is the
// Lambda-Runtime-Aws-Request-Id header, else a counter.
func serveInvoke(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/" {
		http.Error(w, "POST / only", http.StatusNotFound)
		return
	}
	id := req.Header.Get("Lambda-Runtime-Aws-Request-Id")
	if id == "" {
		id = "http-" + strconv.FormatUint(requestIDs.Add(1), 10)
	}
	var r request
	body, err := io.ReadAll(io.LimitReader(req.Body, maxPayload+1))
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	case len(body) > maxPayload:
		http.Error(w, "payload over 6 MiB", http.StatusRequestEntityTooLarge)
		return
	}
	if err := json.Unmarshal(body, &r); err != nil {
		writeError(w, err)
		return
	}
	ctx := lambdacontext.NewContext(req.Context(), &lambdacontext.LambdaContext{AwsRequestID: id})
	resp, err := callHandler(ctx, r)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

// panicError is a recovered handler panic.
type panicError struct{ v any }

func (p panicError) Error() string { return fmt.Sprint(p.v) }

// callHandler runs handle, turning a panic into an error as aws-lambda-go
// does.
func callHandler(ctx context.Context, r request) (resp response, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError{v}
		}
	}()
	return handle(ctx, r)
}

// writeError answers with a Lambda error document: errorType is the type
// name of the error (or of the panic's value), as aws-lambda-go reports it.
func writeError(w http.ResponseWriter, err error) {
	var v any = err
	if p, ok := err.(panicError); ok {
		v = p.v
	}
	t := reflect.TypeOf(v)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	typ := t.Name()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusInternalServerError)
	json.NewEncoder(w).Encode(map[string]string{"errorMessage": err.Error(), "errorType": typ})
}
