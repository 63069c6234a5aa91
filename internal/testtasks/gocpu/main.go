// Command gocpu is a CPU-bound aws-lambda-go handler, for measuring what
// profile-guided optimisation saves (kindling image build --task-src
// --pgo): its event is a batch of orders, a few hundred KB of JSON
// (work.Event makes one), and each invocation works through it
// (work.Process: regular expressions, text analysis, pricing rules, a
// JSON report gzipped), 5 to 20 ms of CPU. The same event gives the same
// answer.
package main

import (
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/kindlingvm/kindling/internal/testtasks/gocpu/work"
)

func main() {
	lambda.Start(work.Handle)
}
