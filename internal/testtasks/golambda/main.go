// Command golambda is an aws-lambda-go handler for the guest agent's
// tests: {"op": "echo"|"error"|"panic"|"sleep"|"exit"|"big", ...}.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
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
	case "big":
		return response{Text: strings.Repeat("x", r.Size)}, nil
	}
	return response{}, fmt.Errorf("unknown op %q", r.Op)
}

func main() { lambda.Start(handle) }
