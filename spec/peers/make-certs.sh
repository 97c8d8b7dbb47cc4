#!/bin/sh
# Test certificates for spec/tls_spec.lua and spec/pbx_spec.lua, made with the openssl
# CLI into DIR: a CA (ca.pem, ca.key), and certificates signed by it with their keys:
# server (127.0.0.1 and localhost), wrong (wrong.example), expired (127.0.0.1, its
# notAfter a day before its notBefore: `-days -1`, accepted by OpenSSL 3.0).
# Usage: make-certs.sh DIR
set -e
cd "$1"
k="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $k -keyout ca.key -out ca.pem -days 30 -subj "/CN=luasip test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
mk() {
  openssl req $k -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
    -days "$4" -extfile "$1.ext"
}
# sofia matches the host name against DNS names and the CN only (not IP address
# entries): an address is listed as a DNS name too
mk server 127.0.0.1 DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1 30
mk wrong wrong.example DNS:wrong.example 30
mk expired 127.0.0.1 DNS:localhost,DNS:127.0.0.1,IP:127.0.0.1 -1
