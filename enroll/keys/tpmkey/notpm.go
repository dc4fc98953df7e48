//go:build notpm

package tpmkey

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"devid/enroll/keys"
)

// DefaultBlobFile is the key blob's name inside the state directory.
const DefaultBlobFile = "device.tpmkey"

// ErrNoTPMSupport is returned for every "tpm:" spec in this build.
var ErrNoTPMSupport = errors.New("this binary was built without TPM support (build tag notpm)")

func init() {
	keys.Register("tpm", func(arg, stateDir string) (keys.Store, error) {
		return nil, fmt.Errorf("key spec %q: %w", "tpm:"+arg, ErrNoTPMSupport)
	})
	keys.Register("auto", func(arg, stateDir string) (keys.Store, error) {
		if arg != "" || stateDir == "" {
			return nil, fmt.Errorf("key spec \"auto\" needs a state directory and no argument")
		}
		if _, err := os.Lstat(filepath.Join(stateDir, DefaultBlobFile)); err == nil {
			return nil, fmt.Errorf("state directory holds a TPM key: %w", ErrNoTPMSupport)
		}
		return keys.Open("file:"+keys.DefaultFilePath(stateDir), stateDir)
	})
}
