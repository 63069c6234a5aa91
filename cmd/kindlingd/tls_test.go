package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kindlingvm/kindling/agent/api"
)

// pki is a throw-away CA with a server and a client certificate.
type pki struct {
	caPEM                 []byte
	serverCert, serverKey []byte
	client                tls.Certificate
	strangerCert          tls.Certificate // signed by another CA
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, caKey, caPEM := makeCert(t, "kindling test CA", nil, nil, true)
	p := &pki{caPEM: caPEM}
	srv, srvKey, srvPEM := makeCert(t, "kindlingd", ca, caKey, false)
	_ = srv
	p.serverCert, p.serverKey = srvPEM, keyPEM(t, srvKey)
	_, cliKey, cliPEM := makeCert(t, "control-plane", ca, caKey, false)
	var err error
	if p.client, err = tls.X509KeyPair(cliPEM, keyPEM(t, cliKey)); err != nil {
		t.Fatal(err)
	}
	other, otherKey, _ := makeCert(t, "another CA", nil, nil, true)
	_, sKey, sPEM := makeCert(t, "stranger", other, otherKey, false)
	if p.strangerCert, err = tls.X509KeyPair(sPEM, keyPEM(t, sKey)); err != nil {
		t.Fatal(err)
	}
	return p
}

func makeCert(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(t *testing.T, k *ecdsa.PrivateKey) []byte {
	b, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestTCPWithMutualTLS: over TCP kindlingd serves only clients with a
// certificate from --tls-client-ca; the Unix socket is mode 0660.
func TestTCPWithMutualTLS(t *testing.T) {
	p := newPKI(t)
	certs := t.TempDir()
	files := map[string][]byte{"ca.pem": p.caPEM, "server.pem": p.serverCert, "server.key": p.serverKey}
	for name, b := range files {
		os.WriteFile(filepath.Join(certs, name), b, 0o600)
	}
	addr := freePort(t)
	d := startDaemon(t, "--listen", addr, "--tls-cert", filepath.Join(certs, "server.pem"),
		"--tls-key", filepath.Join(certs, "server.key"), "--tls-client-ca", filepath.Join(certs, "ca.pem"))
	if st, err := os.Stat(d.Socket); err != nil || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket %s: %v %v, want mode 0660", d.Socket, st.Mode(), err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	call := func(cert *tls.Certificate) error {
		cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = api.NewKindlingClient(conn).HostStatus(ctx, &api.HostStatusRequest{})
		return err
	}
	if err := call(&p.client); err != nil {
		t.Fatalf("client with a CA-signed certificate: %v", err)
	}
	for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "another CA's certificate": &p.strangerCert} {
		if err := call(cert); err == nil {
			t.Errorf("a client with %s was served", name)
		}
	}
}
