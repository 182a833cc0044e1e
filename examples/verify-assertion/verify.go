// Verify a tenantgate `x-tenant-assertion` with golang-jwt/jwt v5 and
// MicahParks/keyfunc v3 (go get github.com/golang-jwt/jwt/v5 github.com/MicahParks/keyfunc/v3).
//
// Usage: go run verify.go JWKS_URL ISSUER AUDIENCE < token
// (Not run by the test suite: this machine has no Go toolchain.)
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
)

func verify(k keyfunc.Keyfunc, token, issuer, audience string) (jwt.MapClaims, error) {
	claims := jwt.MapClaims{}
	t, err := jwt.ParseWithClaims(token, claims, k.Keyfunc,
		jwt.WithValidMethods([]string{"ES256", "EdDSA"}), // never the token's own choice
		jwt.WithIssuer(issuer),
		jwt.WithAudience(audience),
		jwt.WithLeeway(5*time.Second),
		jwt.WithIssuedAt(),
		jwt.WithExpirationRequired(),
	)
	if err != nil {
		return nil, err
	}
	if t.Header["typ"] != "tenant-assertion+jwt" {
		return nil, errors.New("not a tenant assertion")
	}
	return claims, nil
}

func main() {
	// Caches the keys; an unknown kid (a rotated key) refetches the JWKS.
	k, err := keyfunc.NewDefault([]string{os.Args[1]})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	raw, _ := io.ReadAll(os.Stdin)
	claims, err := verify(k, strings.TrimSpace(string(raw)), os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintf(os.Stderr, "invalid assertion: %v\n", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(claims)
	fmt.Println(string(out))
}
