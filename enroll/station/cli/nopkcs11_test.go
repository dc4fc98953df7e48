//go:build !(pkcs11 && cgo)

package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestCAInitPKCS11WithoutTag: a devid-jig built without PKCS#11 support
// refuses --pkcs11 and says how to build one that has it.
func TestCAInitPKCS11WithoutTag(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main(context.Background(), Build{}, []string{"ca", "init", "--dir", filepath.Join(t.TempDir(), "ca"),
		"--pkcs11", "pkcs11:token=a;object=b?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234"}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "built without PKCS#11 support") || !strings.Contains(errOut.String(), "-tags pkcs11") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
}
