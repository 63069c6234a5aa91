package rootfs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
)

// normalTaskConfig drops empty lists, so that a TaskConfig that says
// nothing is the zero value however it was built.
func normalTaskConfig(c TaskConfig) TaskConfig {
	if len(c.Args) == 0 {
		c.Args = nil
	}
	if len(c.Env) == 0 {
		c.Env = nil
	}
	return c
}

// isZeroTaskConfig reports whether c says nothing: an image without one
// has no TaskConfigPath, as images had before there were task configs.
func isZeroTaskConfig(c TaskConfig) bool {
	return reflect.ValueOf(normalTaskConfig(c)).IsZero()
}

// encodeTaskConfig is the bytes packed at TaskConfigPath.
func encodeTaskConfig(c TaskConfig) ([]byte, error) {
	b, err := json.Marshal(normalTaskConfig(c))
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// verifyTaskConfig checks the extracted TaskConfigPath against m.Run: it
// must hold exactly m.Run, or be absent if m.Run is zero, since
// kindling-init obeys it.
func verifyTaskConfig(root string, m *Manifest) error {
	zero := isZeroTaskConfig(m.Run)
	// Its directory must be a real one: kindling-init would follow a link.
	dir := filepath.Dir(TaskConfigPath)
	if err := realDirs(root, dir); err != nil {
		if zero && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("/%s: %w", TaskConfigPath, err)
	}
	p := filepath.Join(root, TaskConfigPath)
	st, err := os.Lstat(p)
	switch {
	case zero && err == nil:
		return fmt.Errorf("/%s is in the image but not in the manifest", TaskConfigPath)
	case zero && errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("/%s: %w", TaskConfigPath, err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("/%s is not a regular file (%v)", TaskConfigPath, st.Mode().Type())
	}
	got, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	want, err := encodeTaskConfig(m.Run)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("/%s does not match the manifest's run", TaskConfigPath)
	}
	return nil
}
