// Command gosnapstart is a custom Lambda runtime with SnapStart hooks,
// written against the Runtime API the way AWS's runtime interface clients
// are: with AWS_LAMBDA_INITIALIZATION_TYPE=snap-start it runs its
// before-snapshot hook at the end of init, asks GET /runtime/restore/next
// (which returns in each restored environment), runs its after-restore
// hook (reseeding its own random state) and only then asks for
// invocations. Each invocation answers {"events": [...], "random": "..."}:
// the hooks and invocations in the order they ran, and a value from its
// random state.
//
// KINDLING_TEST_HANG_BEFORE_SNAPSHOT=1 makes its before-snapshot hook
// hang; KINDLING_TEST_FAIL_RESTORE=1 makes its after-restore hook fail
// (reported on /runtime/restore/error, then it exits as AWS's clients do).
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"time"
)

func main() {
	api := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime"
	var events []string
	// Seeded once at init: without the after-restore hook every restored
	// copy would draw the same numbers.
	var seed [32]byte
	rand.Read(seed[:])
	rng := mrand.NewChaCha8(seed)
	if os.Getenv("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start" {
		events = append(events, "before-snapshot")
		fmt.Println("before-snapshot hook")
		if os.Getenv("KINDLING_TEST_HANG_BEFORE_SNAPSHOT") == "1" {
			for { // a bare select{} would be a deadlock the runtime ends
				time.Sleep(time.Hour)
			}
		}
		resp, err := http.Get(api + "/restore/next")
		if err != nil || resp.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, "restore/next:", err, resp)
			os.Exit(1)
		}
		resp.Body.Close()
		if os.Getenv("KINDLING_TEST_FAIL_RESTORE") == "1" {
			doc := `{"errorMessage":"after-restore hook failed on purpose","errorType":"Runtime.AfterRestoreError"}`
			r, _ := http.Post(api+"/restore/error", "application/json", bytes.NewBufferString(doc))
			if r != nil {
				r.Body.Close()
			}
			os.Exit(64)
		}
		rand.Read(seed[:])
		rng = mrand.NewChaCha8(seed)
		events = append(events, "after-restore")
		fmt.Println("after-restore hook")
	}
	client := &http.Client{Timeout: 0}
	for {
		resp, err := client.Get(api + "/invocation/next")
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		id := resp.Header.Get("Lambda-Runtime-Aws-Request-Id")
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		events = append(events, "invoke")
		var r [8]byte
		rng.Read(r[:])
		out, _ := json.Marshal(map[string]any{"events": events, "random": hex.EncodeToString(r[:])})
		post, err := client.Post(api+"/invocation/"+id+"/response", "application/json", bytes.NewReader(out))
		if err == nil {
			post.Body.Close()
		}
	}
}
