#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages postern's demo and tests need
# and that this machine lacks. Sourced by demo.sh and test.sh; root only.
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip  || need+=(iproute2)
have nft || need+=(nftables)
have iptables || need+=(iptables)
have ipset || need+=(ipset)
have knockd || need+=(knockd)   # the real knock and knockd, for compatibility tests
have fwknop || need+=(fwknop-client)
have fwknopd || need+=(fwknop-server)
have gpg || need+=(gnupg)
have tcpdump || need+=(tcpdump)
have systemd-analyze || need+=(systemd)          # the unit file's verifier
have fail2ban-regex || need+=(fail2ban)         # the fail2ban example's filter
have promtool || need+=(prometheus)             # promtool check metrics
have man || need+=(man-db)                      # the man pages render
have turnserver || need+=(coturn)               # a real STUN server for --allow auto
have ssh-keygen || need+=(openssh-client)       # ssh-keygen, ssh-agent: SSH identities, KRLs
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "postern: missing ${need[*]}; run as root so they can be installed" >&2
    exit 1
  fi
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Packages that ship services must not run them: the tests start their own.
  for svc in knockd fwknop-server fail2ban prometheus coturn; do systemctl disable --now "$svc" >/dev/null 2>&1 || true; done
fi
# Go 1.26 from the machine; /usr/local/go is where it lives on a fresh one.
case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) PATH=/usr/local/go/bin:$PATH ;; esac
export PATH
