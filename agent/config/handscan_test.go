package config

import (
	"regexp"
	"testing"
)

// The hand-written checks must agree with the patterns they replace.
var (
	userinfoRE = regexp.MustCompile(`//([^/@:\s]*:)[^/@\s]*@`)
	idScopeRE  = regexp.MustCompile(`^[A-Za-z0-9]{1,32}$`)
	groupRE    = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}\$?$`)
)

func checkHandScans(t *testing.T, s string) {
	t.Helper()
	if got, want := redactUserinfo(s), userinfoRE.ReplaceAllString(s, "//${1}xxxxx@"); got != want {
		t.Errorf("redactUserinfo(%q) = %q, the pattern gives %q", s, got, want)
	}
	if got, want := validIDScope(s), idScopeRE.MatchString(s); got != want {
		t.Errorf("validIDScope(%q) = %v, the pattern gives %v", s, got, want)
	}
	if got, want := validGroupName(s), groupRE.MatchString(s); got != want {
		t.Errorf("validGroupName(%q) = %v, the pattern gives %v", s, got, want)
	}
}

var handScanSeeds = []string{
	"", "a", "0ne00ABC123", "0123456789012345678901234567890123", "_", "$", "a$", "a$$", "dev-id_1$", "-a", "1a", "Abc",
	"http://user:secret@host/x", "http://user:s3cr3t@[::1", "//a:b@//c:d@", "///a:b@", "//:@", "//a b:c@",
	"x //u:p@ y //v:q@z", "http://u:p/@h", "//u:p:q@h", "http://host:80/path", "abcdefghijklmnopqrstuvwxyzabcdef$", "abcdefghijklmnopqrstuvwxyzabcdefg",
}

func TestHandScansMatchPatterns(t *testing.T) {
	for _, s := range handScanSeeds {
		checkHandScans(t, s)
	}
}

func FuzzHandScans(f *testing.F) {
	for _, s := range handScanSeeds {
		f.Add(s)
	}
	f.Fuzz(checkHandScans)
}
