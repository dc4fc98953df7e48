package dps

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Operational-certificate renewal through IoT Hub (preview; the wire
// forms are in docs/dps.md). It needs the hub api-version 2025-08-01-preview, which
// HubConfig.CertificateRenewal selects.
const (
	hubCSRAPIVersion     = "2025-08-01-preview"
	credentialsSubscribe = "$iothub/credentials/res/#"
	credentialsResPrefix = "$iothub/credentials/res/"
	credentialsPostFmt   = "$iothub/credentials/POST/issueCertificate/?$rid=%s"
)

type credentialRequest struct {
	ID      string `json:"id"`
	CSR     string `json:"csr"`
	Replace string `json:"replace,omitempty"`
}

// CertificateRequestOptions adjust a hub certificate request.
type CertificateRequestOptions struct {
	// Replace asks the hub to drop an active request first: "*" for any,
	// or the $rid of an earlier request (RequestActiveError.RequestID).
	// Empty: an active request makes this one fail with
	// *RequestActiveError. A device that lost track of its request (a
	// reboot) sends "*" rather than wait for the expiry.
	Replace string
}

// RequestCertificate asks the hub to issue an operational certificate
// for csrDER (DER PKCS#10, CN = device ID) and returns the chain, leaf
// first. The hub answers 202 at once and the chain later on the same
// subscription; this waits for it until ctx ends or the connection
// drops (then the caller asks again on its next connection). Errors:
// *RequestActiveError (409005: another request is active until its
// Expires), *StatusError (400 bad CSR, 412 nothing to replace, 429 with
// RetryAfter, 5xx), *ProtocolError for a chain that does not parse or
// does not match the CSR's key. HubConfig.CertificateRenewal must be set.
func (h *Hub) RequestCertificate(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error) {
	return h.RequestCertificateWithOptions(ctx, csrDER, CertificateRequestOptions{})
}

// RequestCertificateWithOptions is RequestCertificate with options, e.g.
// Replace to take over from a request lost in a reboot.
func (h *Hub) RequestCertificateWithOptions(ctx context.Context, csrDER []byte, opts CertificateRequestOptions) ([]*x509.Certificate, error) {
	if !h.cfg.CertificateRenewal {
		return nil, &ConfigError{Field: "certificate renewal", Err: errors.New("HubConfig.CertificateRenewal is off")}
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, &ConfigError{Field: "csr", Err: err}
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, &ConfigError{Field: "csr", Err: err}
	}
	if csr.Subject.CommonName != h.cfg.DeviceID {
		return nil, &ConfigError{Field: "csr", Err: fmt.Errorf("CN %q must equal the device ID %q", csr.Subject.CommonName, h.cfg.DeviceID)}
	}
	// rid: 4-36 ASCII alphanumerics (and inner "-").
	rid := fmt.Sprintf("cert%08d", h.rid.Add(1))
	ch := make(chan twinReply, 4)
	h.mu.Lock()
	h.waiters[rid] = ch
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.waiters, rid)
		h.mu.Unlock()
	}()
	s, err := h.session()
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(credentialRequest{ID: h.cfg.DeviceID, CSR: base64.StdEncoding.EncodeToString(csrDER), Replace: opts.Replace})
	s.publishAsync(fmt.Sprintf(credentialsPostFmt, rid), 1, body)
	for {
		select {
		case r := <-ch:
			switch r.resp.Status {
			case 202: // accepted; the chain follows on the same subscription
			case 200:
				return parseIssuedCredential(r.body, csr.PublicKey)
			default:
				return nil, requestActive(parseStatusError("hub certificate request", r.resp, r.body))
			}
		case <-s.lost:
			return nil, s.lostErr
		case <-h.done:
			return nil, h.stopped()
		case <-ctx.Done():
			return nil, ctxError(ctx, "hub certificate request", 0, nil)
		}
	}
}

// parseIssuedCredential accepts both documented 200 bodies: a bare JSON
// array of base64 DER certificates (SDKs) or {"certificates":[PEM...]}
// (docs) [CONFLICT in the reference].
func parseIssuedCredential(body []byte, pub crypto.PublicKey) ([]*x509.Certificate, error) {
	var entries []string
	trimmed := strings.TrimSpace(string(body))
	if strings.HasPrefix(trimmed, "[") {
		if err := json.Unmarshal(body, &entries); err != nil {
			return nil, &ProtocolError{What: "credentials 200 body", Raw: trimmed, Err: err}
		}
	} else {
		var wrapped struct {
			Certificates []string `json:"certificates"`
		}
		if err := json.Unmarshal(body, &wrapped); err != nil {
			return nil, &ProtocolError{What: "credentials 200 body", Raw: trimmed, Err: err}
		}
		entries = wrapped.Certificates
	}
	if len(entries) == 0 {
		return nil, &ProtocolError{What: "credentials 200 body", Raw: trimmed, Err: errors.New("no certificates")}
	}
	chain, err := ParseIssuedChain(entries)
	if err != nil {
		return nil, err
	}
	type eq interface{ Equal(crypto.PublicKey) bool }
	if k, ok := chain[0].PublicKey.(eq); !ok || !k.Equal(pub) {
		return nil, &ProtocolError{What: "issued certificate", Raw: chain[0].Subject.String(), Err: errors.New("public key differs from the CSR's")}
	}
	return chain, nil
}
