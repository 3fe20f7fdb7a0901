package main

// Certificates for the test cluster: one CA that signs the API server's
// serving certificate and every client certificate, plus the key pair that
// signs service account tokens. They are kept in DATA_DIR/pki and reused when
// the cluster is restarted on the same data dir.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/keyutil"
)

type pki struct {
	dir   string
	ca    *x509.Certificate
	caKey crypto.Signer
	caPEM []byte
}

func (p *pki) file(name string) string { return filepath.Join(p.dir, name) }

func ensurePKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	if _, err := os.Stat(p.file("ca.crt")); errors.Is(err, os.ErrNotExist) {
		if err := p.create(); err != nil {
			return nil, err
		}
	}
	return p, p.load()
}

// create writes a fresh CA, API server certificate and service account key.
func (p *pki) create() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubenas-testcluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return err
	}
	p.ca, _ = x509.ParseCertificate(caDER)
	p.caKey = caKey
	if err := writePEM(p.file("ca.crt"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	if err := writeKey(p.file("ca.key"), caKey); err != nil {
		return err
	}

	// Serving certificate: valid for loopback and the in-cluster names.
	certPEM, keyPEM, err := p.issue(pkix.Name{CommonName: "kube-apiserver"}, true,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.96.0.1")})
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.file("apiserver.crt"), certPEM, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(p.file("apiserver.key"), keyPEM, 0o600); err != nil {
		return err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := writeKey(p.file("sa.key"), saKey); err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	return writePEM(p.file("sa.pub"), "PUBLIC KEY", pubDER)
}

func (p *pki) load() error {
	caPEM, err := os.ReadFile(p.file("ca.crt"))
	if err != nil {
		return err
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return fmt.Errorf("%s: no PEM data", p.file("ca.crt"))
	}
	if p.ca, err = x509.ParseCertificate(block.Bytes); err != nil {
		return err
	}
	key, err := keyutil.PrivateKeyFromFile(p.file("ca.key"))
	if err != nil {
		return err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return fmt.Errorf("%s: not a signing key", p.file("ca.key"))
	}
	p.caKey, p.caPEM = signer, caPEM
	return nil
}

// issue signs a new key pair's certificate with the CA; PEM cert and key.
func (p *pki) issue(subject pkix.Name, server bool, dnsNames []string, ips []net.IP) ([]byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	usage := x509.ExtKeyUsageClientAuth
	if server {
		usage = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     p.ca.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// kubeconfig returns a self-contained kubeconfig (certificates inlined) that
// authenticates as user, member of groups, by client certificate.
func (p *pki) kubeconfig(server, user string, groups []string) (*clientcmdapi.Config, error) {
	certPEM, keyPEM, err := p.issue(pkix.Name{CommonName: user, Organization: groups}, false, nil, nil)
	if err != nil {
		return nil, err
	}
	const name = "kubenas-testcluster"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = name
	return cfg, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}
