package ca

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
)

// PKCS11URI is a PKCS#11 URI (RFC 7512) naming the token and the key of
// a CA kept in a hardware security module (docs/ca.md, "The CA key in an
// HSM"). The forms understood are
//
//	pkcs11:token=LABEL;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/devid/pin
//	pkcs11:serial=SERIAL;id=%01%02?module-path=...&pin-value=1234
//
// Exactly one of token, serial and slot-id selects the token; object
// (CKA_LABEL) and id (CKA_ID) select the key. module-path is required.
type PKCS11URI struct {
	ModulePath  string // module-path: the PKCS#11 library to load
	TokenLabel  string // token
	TokenSerial string // serial
	SlotID      *int   // slot-id
	Object      string // object: the key's CKA_LABEL
	ID          []byte // id: the key's CKA_ID
	PINValue    string // pin-value (never written back by String)
	PINSource   string // pin-source: a file holding the PIN (file: URI or path)
}

// PINEnv is the environment variable read for the token's user PIN when
// the URI carries neither pin-value nor pin-source.
const PINEnv = "DEVID_PKCS11_PIN"

// Path attributes of RFC 7512 that are accepted and ignored (they only
// narrow a search this package does by label, serial or slot).
var ignoredPKCS11Path = []string{"manufacturer", "model", "library-manufacturer", "library-description",
	"library-version", "slot-description", "slot-manufacturer", "type"}

// ParsePKCS11URI parses s. An attribute this package does not know, a
// repeated attribute, bad percent-encoding or a missing module-path is an
// error naming it.
func ParsePKCS11URI(s string) (*PKCS11URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return nil, fmt.Errorf("PKCS#11 URI %q: does not start with \"pkcs11:\"", redactPIN(s))
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &PKCS11URI{}
	seen := map[string]bool{}
	parse := func(part, sep string, isQuery bool) error {
		if part == "" {
			return nil
		}
		for _, attr := range strings.Split(part, sep) {
			k, v, ok := strings.Cut(attr, "=")
			if !ok || k == "" {
				return fmt.Errorf("attribute %q is not NAME=VALUE", redactPIN(attr))
			}
			if seen[k] {
				return fmt.Errorf("attribute %s given twice", k)
			}
			seen[k] = true
			val, err := url.PathUnescape(v)
			if err != nil {
				return fmt.Errorf("attribute %s: bad percent-encoding", k)
			}
			switch {
			case !isQuery && k == "token":
				u.TokenLabel = val
			case !isQuery && k == "serial":
				u.TokenSerial = val
			case !isQuery && k == "slot-id":
				n, err := strconv.Atoi(val)
				if err != nil || n < 0 {
					return fmt.Errorf("attribute slot-id=%q: want a slot number", v)
				}
				u.SlotID = &n
			case !isQuery && k == "object":
				u.Object = val
			case !isQuery && k == "id":
				u.ID = []byte(val)
			case !isQuery && slices.Contains(ignoredPKCS11Path, k):
			case isQuery && k == "module-path":
				u.ModulePath = val
			case isQuery && k == "pin-value":
				u.PINValue = val
			case isQuery && k == "pin-source":
				u.PINSource = val
			case isQuery && k == "module-name":
				return errors.New("module-name is not supported: give module-path, the library's full path")
			default:
				where := "path"
				if isQuery {
					where = "query"
				}
				return fmt.Errorf("unknown %s attribute %q (known: token, serial, slot-id, object, id; ?module-path, pin-value, pin-source)", where, k)
			}
		}
		return nil
	}
	if err := parse(path, ";", false); err != nil {
		return nil, fmt.Errorf("PKCS#11 URI %q: %w", redactPIN(s), err)
	}
	if err := parse(query, "&", true); err != nil {
		return nil, fmt.Errorf("PKCS#11 URI %q: %w", redactPIN(s), err)
	}
	if err := u.check(); err != nil {
		return nil, fmt.Errorf("PKCS#11 URI %q: %w", redactPIN(s), err)
	}
	return u, nil
}

func (u *PKCS11URI) check() error {
	if u.ModulePath == "" {
		return errors.New("no module-path (the PKCS#11 library, e.g. ?module-path=/usr/lib/softhsm/libsofthsm2.so)")
	}
	n := 0
	for _, set := range []bool{u.TokenLabel != "", u.TokenSerial != "", u.SlotID != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("give exactly one of token, serial and slot-id to select the token (%d given)", n)
	}
	if u.PINValue != "" && u.PINSource != "" {
		return errors.New("give pin-value or pin-source, not both")
	}
	return nil
}

// String is the URI without pin-value: what a CA directory records.
// pin-source is kept (it names a file, not the PIN).
func (u *PKCS11URI) String() string {
	esc := func(s string) string {
		var b strings.Builder
		for _, c := range []byte(s) {
			if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~:[]@!$'()*+,/", c) >= 0 {
				b.WriteByte(c)
			} else {
				fmt.Fprintf(&b, "%%%02X", c)
			}
		}
		return b.String()
	}
	var path []string
	if u.TokenLabel != "" {
		path = append(path, "token="+esc(u.TokenLabel))
	}
	if u.TokenSerial != "" {
		path = append(path, "serial="+esc(u.TokenSerial))
	}
	if u.SlotID != nil {
		path = append(path, "slot-id="+strconv.Itoa(*u.SlotID))
	}
	if u.Object != "" {
		path = append(path, "object="+esc(u.Object))
	}
	if len(u.ID) > 0 {
		var b strings.Builder
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02X", c)
		}
		path = append(path, "id="+b.String())
	}
	q := []string{"module-path=" + esc(u.ModulePath)}
	if u.PINSource != "" {
		q = append(q, "pin-source="+esc(u.PINSource))
	}
	return "pkcs11:" + strings.Join(path, ";") + "?" + strings.Join(q, "&")
}

// Token describes the token for error messages.
func (u *PKCS11URI) Token() string {
	switch {
	case u.TokenLabel != "":
		return fmt.Sprintf("token %q", u.TokenLabel)
	case u.TokenSerial != "":
		return fmt.Sprintf("token with serial %q", u.TokenSerial)
	case u.SlotID != nil:
		return fmt.Sprintf("token in slot %d", *u.SlotID)
	}
	return "token"
}

// PIN returns the user PIN: pin-value, else the first line of the
// pin-source file, else $DEVID_PKCS11_PIN.
func (u *PKCS11URI) PIN() (string, error) {
	if u.PINValue != "" {
		return u.PINValue, nil
	}
	if u.PINSource != "" {
		p := u.PINSource
		if after, ok := strings.CutPrefix(p, "file://"); ok {
			p = after
		} else if after, ok := strings.CutPrefix(p, "file:"); ok {
			p = after
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("PKCS#11 pin-source: %w", err)
		}
		pin, _, _ := strings.Cut(string(b), "\n")
		pin = strings.TrimRight(pin, "\r")
		if pin == "" {
			return "", fmt.Errorf("PKCS#11 pin-source %s: the file is empty (want the PIN on its first line)", p)
		}
		return pin, nil
	}
	if pin := os.Getenv(PINEnv); pin != "" {
		return pin, nil
	}
	return "", fmt.Errorf("no PIN for the PKCS#11 %s: the URI has neither pin-value nor pin-source, and $%s is not set", u.Token(), PINEnv)
}

// redactPIN hides a pin-value in s, for error messages.
func redactPIN(s string) string {
	i := strings.Index(s, "pin-value=")
	if i < 0 {
		return s
	}
	j := strings.IndexAny(s[i:], "&;")
	if j < 0 {
		return s[:i] + "pin-value=REDACTED"
	}
	return s[:i] + "pin-value=REDACTED" + redactPIN(s[i+j:])
}
