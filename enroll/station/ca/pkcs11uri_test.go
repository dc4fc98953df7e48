package ca_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/station/ca"
)

func TestParsePKCS11URI(t *testing.T) {
	u, err := ca.ParsePKCS11URI("pkcs11:token=My%20CA;object=line7;id=%01%ff;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=12%3b34")
	if err != nil {
		t.Fatal(err)
	}
	if u.TokenLabel != "My CA" || u.Object != "line7" || !bytes.Equal(u.ID, []byte{1, 0xff}) || u.ModulePath != "/usr/lib/softhsm/libsofthsm2.so" || u.PINValue != "12;34" {
		t.Fatalf("parsed %+v", u)
	}
	s := u.String()
	if s != "pkcs11:token=My%20CA;object=line7;id=%01%FF?module-path=/usr/lib/softhsm/libsofthsm2.so" {
		t.Fatalf("String() = %q", s)
	}
	if v, err := ca.ParsePKCS11URI(s); err != nil || v.String() != s {
		t.Fatalf("String() does not parse back: %v, %v", v, err)
	}
	for _, tc := range []struct{ uri, want string }{
		{"file:/x", `does not start with "pkcs11:"`},
		{"pkcs11:token=a", "no module-path"},
		{"pkcs11:object=a?module-path=/m", "exactly one of token, serial and slot-id to select the token (0 given)"},
		{"pkcs11:token=a;serial=b?module-path=/m", "(2 given)"},
		{"pkcs11:token=a;token=b?module-path=/m", "attribute token given twice"},
		{"pkcs11:token=a;colour=red?module-path=/m", `unknown path attribute "colour"`},
		{"pkcs11:token=a?module-path=/m&foo=1", `unknown query attribute "foo"`},
		{"pkcs11:token=a?module-name=softhsm2", "module-name is not supported"},
		{"pkcs11:token=%zz?module-path=/m", "token: bad percent-encoding"},
		{"pkcs11:slot-id=-1?module-path=/m", "want a slot number"},
		{"pkcs11:token=a?module-path=/m&pin-value=secret&pin-source=/p", "not both"},
		{"pkcs11:token=a;bare?module-path=/m&pin-value=secret", `"bare" is not NAME=VALUE`},
	} {
		_, err := ca.ParsePKCS11URI(tc.uri)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want an error containing %q", tc.uri, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: the error shows the PIN: %v", tc.uri, err)
		}
	}
}

func TestPKCS11URIPIN(t *testing.T) {
	dir := t.TempDir()
	pin := filepath.Join(dir, "pin")
	os.WriteFile(pin, []byte("5678\r\nignored\n"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	t.Setenv(ca.PINEnv, "")
	for _, tc := range []struct{ uri, env, pin, err string }{
		{"pkcs11:token=a?module-path=/m&pin-value=1", "", "1", ""},
		{"pkcs11:token=a?module-path=/m&pin-source=file:" + pin, "", "5678", ""},
		{"pkcs11:token=a?module-path=/m&pin-source=file://" + pin, "", "5678", ""},
		{"pkcs11:token=a?module-path=/m&pin-source=" + pin, "", "5678", ""},
		{"pkcs11:token=a?module-path=/m&pin-source=" + empty, "", "", "the file is empty"},
		{"pkcs11:token=a?module-path=/m&pin-source=" + dir + "/none", "", "", "no such file"},
		{"pkcs11:token=a?module-path=/m", "99", "99", ""},
		{"pkcs11:token=a?module-path=/m", "", "", "$" + ca.PINEnv + " is not set"},
	} {
		t.Setenv(ca.PINEnv, tc.env)
		u, err := ca.ParsePKCS11URI(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		p, err := u.PIN()
		if p != tc.pin || (tc.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: PIN %q, %v; want %q, error %q", tc.uri, p, err, tc.pin, tc.err)
		}
	}
}

// FuzzParsePKCS11URI: the URI comes from the command line and from a file
// in the CA directory. The parser must not panic, must never put a PIN in
// an error, and what it accepts prints back (String) to a URI that parses
// to the same thing without the pin-value.
func FuzzParsePKCS11URI(f *testing.F) {
	f.Add("pkcs11:token=devid-ca;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234")
	f.Add("pkcs11:serial=abc;id=%01%02?module-path=/m&pin-source=file:/p")
	f.Add("pkcs11:slot-id=3;object=a%20b?module-path=/m")
	f.Add("pkcs11:token=a;;object=?module-path=/m&&pin-value=")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ca.ParsePKCS11URI(s)
		if err != nil {
			if strings.Contains(s, "pin-value=PINPINPIN") && strings.Contains(err.Error(), "PINPINPIN") {
				t.Fatalf("error shows the PIN: %v", err)
			}
			return
		}
		out := u.String()
		v, err := ca.ParsePKCS11URI(out)
		if err != nil {
			t.Fatalf("%q printed as %q, which does not parse: %v", s, out, err)
		}
		if v.PINValue != "" || v.String() != out || v.TokenLabel != u.TokenLabel || v.Object != u.Object || !bytes.Equal(v.ID, u.ID) || v.ModulePath != u.ModulePath {
			t.Fatalf("%q printed as %q parses to %+v, not %+v", s, out, v, u)
		}
	})
}
