# Sourced by the lab's scripts: the sshd_config of a lab host (a box, the
# router) whose sshd lives in DIR and listens on ADDRESS: key login only,
# its own host key, pid file and authorized keys, no PAM.
write_sshd_config() {
  local dir=$1 address=$2
  cat > "$dir/sshd_config" <<EOF
ListenAddress $address
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
UsePAM no
EOF
}
