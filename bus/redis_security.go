package bus

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSFiles names the files of a TLS setup for Redis, as operators have
// them: the CA that signed the server's certificate and, for servers that
// ask clients for certificates (tls-auth-clients yes), the client's own.
type TLSFiles struct {
	CAFile   string // PEM bundle of trusted CAs; default: the system's
	CertFile string // client certificate (PEM), with KeyFile
	KeyFile  string // client key (PEM)
	// ServerName overrides the name the server's certificate must carry
	// (default: the URL's host).
	ServerName string
	// InsecureSkipVerify accepts any server certificate. For tests only.
	InsecureSkipVerify bool
}

// Config returns the *tls.Config the files describe. A missing or
// unreadable file is an error naming it.
func (f TLSFiles) Config() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName, InsecureSkipVerify: f.InsecureSkipVerify}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bus: TLS CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bus: TLS CA file %s holds no PEM certificate", f.CAFile)
		}
		c.RootCAs = pool
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, errors.New("bus: TLS client certificate needs both CertFile and KeyFile")
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("bus: TLS client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// applySecurity puts Username, Password and TLS over what the URL says,
// for every topology (a Sentinel URL's are the master's; the sentinels'
// own credentials stay in the URL's userinfo).
func (c *RedisConfig) applySecurity(u *RedisURL) {
	var user, pass *string
	var tc **tls.Config
	switch {
	case u.Single != nil:
		user, pass, tc = &u.Single.Username, &u.Single.Password, &u.Single.TLSConfig
	case u.Cluster != nil:
		user, pass, tc = &u.Cluster.Username, &u.Cluster.Password, &u.Cluster.TLSConfig
	case u.Failover != nil:
		user, pass, tc = &u.Failover.Username, &u.Failover.Password, &u.Failover.TLSConfig
	default:
		return
	}
	if c.Username != "" {
		*user = c.Username
	}
	if c.Password != "" {
		*pass = c.Password
	}
	if c.TLS != nil {
		// With no ServerName, the TLS dial checks each node's certificate
		// against the host it dials.
		*tc = c.TLS.Clone()
	}
}
