package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/lambdacontext"
)

func TestHandle(t *testing.T) {
	var logs bytes.Buffer
	g := &greeter{log: slog.New(slog.NewTextHandler(&logs, nil))}
	for i, c := range []struct {
		req     Request
		want    Response
		wantErr string
	}{
		{Request{Name: "Kindling"}, Response{Greeting: "Hello, Kindling!", RequestID: "req-0", Cold: true}, ""},
		{Request{Name: "  Ada \n"}, Response{Greeting: "Hello, Ada!", RequestID: "req-1"}, ""},
		{Request{}, Response{Greeting: "Hello, world!", RequestID: "req-2"}, ""},
		{Request{Name: strings.Repeat("é", maxName)}, Response{Greeting: "Hello, " + strings.Repeat("é", maxName) + "!", RequestID: "req-3"}, ""},
		{Request{Name: strings.Repeat("x", maxName+1)}, Response{}, "longer than 100"},
	} {
		ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: "req-" + string(rune('0'+i))})
		got, err := g.handle(ctx, c.req)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%d: error %v, want %q", i, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%d: %+v %v, want %+v", i, got, err, c.want)
		}
	}
	if n := strings.Count(logs.String(), "msg=greeted"); n != 4 {
		t.Errorf("%d log lines for 4 greetings:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "cold=true") {
		t.Errorf("the first invocation's log line does not say cold:\n%s", logs.String())
	}
	if _, err := g.handle(context.Background(), Request{}); err == nil {
		t.Error("a call without a Lambda context succeeded")
	}
}
