package main

// What a version's instances learned, fetched from kindlingd to build the
// next image from: its merged CPU profile (for go build -pgo) and the
// artifacts of its warm-ups (Node's compile cache).

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/kindlingvm/kindling/agent/api"
)

// fetchProfile asks kindlingd for the merged CPU profile of function's
// version (the latest registered when version is empty). It is an error
// for there to be none: the version's image was built without --profile,
// or it has not been invoked yet.
func (d *daemonCLI) fetchProfile(function, version string) (*api.GetProfileResponse, error) {
	dc, err := d.dial()
	if err != nil {
		return nil, err
	}
	defer dc.Close()
	r, err := call(dc, "profile of "+function, dc.GetProfile, &api.GetProfileRequest{Function: function, Version: version})
	if err != nil {
		return nil, err
	}
	if len(r.Profile) == 0 {
		return nil, fmt.Errorf("profile of %s:%s: none collected yet (was its image built with --profile, and has it been invoked?)", function, r.Version)
	}
	return r, nil
}

// fetchArtifact streams the artifact name of function's version into w.
func (d *daemonCLI) fetchArtifact(function, version, name string, w io.Writer) (int64, error) {
	dc, err := d.dial()
	if err != nil {
		return 0, err
	}
	defer dc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	verb := fmt.Sprintf("%s of %s", name, function)
	st, err := dc.GetArtifact(ctx, &api.GetArtifactRequest{Function: function, Version: version, Name: name})
	if err != nil {
		return 0, dc.fail(verb, err)
	}
	var n int64
	for {
		c, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, dc.fail(verb, err)
		}
		m, err := w.Write(c.Data)
		n += int64(m)
		if err != nil {
			return n, fmt.Errorf("%s: %w", verb, err)
		}
	}
}
