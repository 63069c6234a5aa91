// Command hello is Kindling's bundled example: an AWS Lambda function
// written with aws-lambda-go, exactly as it would be deployed to Lambda.
// Kindling runs the same binary unchanged: kindling-init, the image's
// /init, serves it the Lambda Runtime API.
//
// Event:    {"name": "Ada"}
// Response: {"greeting": "Hello, Ada!", "request_id": "...", "cold": true}
//
// cold is true only for the first invocation this process serves: the
// one that paid for its start. It logs one line per invocation (to
// stdout, which kindlingd streams back to the caller).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// maxName bounds the name a caller may send, in characters: a greeting
// is no place for a payload of megabytes.
const maxName = 100

// Request is the event.
type Request struct {
	Name string `json:"name"`
}

// Response is the handler's answer.
type Response struct {
	Greeting  string `json:"greeting"`
	RequestID string `json:"request_id"`
	Cold      bool   `json:"cold"`
}

// greeter is the function's state across the invocations of one process.
type greeter struct {
	log    *slog.Logger
	served atomic.Bool // set by the first invocation
}

// errNameTooLong is what a caller gets for an over-long name (a Lambda
// error document, errorType "errorString").
var errNameTooLong = fmt.Errorf("name is longer than %d characters", maxName)

func (g *greeter) handle(ctx context.Context, req Request) (Response, error) {
	cold := !g.served.Swap(true)
	lc, ok := lambdacontext.FromContext(ctx)
	if !ok {
		return Response{}, errors.New("no Lambda context: run me under a Lambda runtime (or Kindling)")
	}
	name := strings.TrimSpace(req.Name)
	if utf8.RuneCountInString(name) > maxName {
		g.log.WarnContext(ctx, "refused", "name_chars", utf8.RuneCountInString(name))
		return Response{}, errNameTooLong
	}
	if name == "" {
		name = "world"
	}
	g.log.InfoContext(ctx, "greeted", "name", name, "cold", cold)
	return Response{Greeting: "Hello, " + name + "!", RequestID: lc.AwsRequestID, Cold: cold}, nil
}

func main() {
	// lambdacontext's handler adds the request ID to every line and
	// honours AWS_LAMBDA_LOG_FORMAT=JSON and AWS_LAMBDA_LOG_LEVEL.
	g := &greeter{log: lambdacontext.NewLogger()}
	lambda.Start(g.handle)
}
