# The guide topology on DigitalOcean: 2 lb droplets (HAProxy + the Reserved
# IP), 3 control planes (the voters), N workers, one VPC, one Reserved IP.
# kubeha moves the Reserved IP between the lb droplets through the API;
# Terraform only creates it and never assigns it (that would fight the
# agents on every apply).

locals {
  voters      = ["cp-0", "cp-1", "cp-2"]
  gossip_port = 7946
  endpoint      = "${digitalocean_reserved_ip.api.ip_address}:6443"
  tag_node      = "kubeha-${var.cluster_name}"
  tag_lb        = "kubeha-${var.cluster_name}-lb"
  tag_cp        = "kubeha-${var.cluster_name}-cp"
  cp_rest_names = ["cp-1", "cp-2"]
}

resource "digitalocean_vpc" "cluster" {
  name     = "kubeha-${var.cluster_name}"
  region   = var.region
  ip_range = var.vpc_cidr
}

resource "digitalocean_reserved_ip" "api" {
  region = var.region
}

# cp-0 first: the others list it as their gossip seed (a droplet's private
# address is known only once it exists, so seeds follow creation order).
resource "digitalocean_droplet" "cp0" {
  name     = "cp-0"
  region   = var.region
  size     = var.control_plane_size
  image    = var.image
  vpc_uuid = digitalocean_vpc.cluster.id
  ssh_keys = var.ssh_key_fingerprints
  tags     = [local.tag_node, local.tag_cp]
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    node_name          = "cp-0"
    role               = "control-plane"
    cluster            = var.cluster_name
    voters_toml        = jsonencode(local.voters)
    seeds_toml         = jsonencode([])
    gossip_port        = local.gossip_port
    endpoint           = local.endpoint
    reserved_ip        = digitalocean_reserved_ip.api.ip_address
    cluster_key        = var.cluster_key
    control_key        = var.control_key
    control_public_key = var.control_public_key
    agent_do_token     = ""
    deb_url            = var.kubeha_deb_url
    deb_sha256         = var.kubeha_deb_sha256
  })
}

resource "digitalocean_droplet" "cp" {
  for_each = toset(local.cp_rest_names)
  name     = each.key
  region   = var.region
  size     = var.control_plane_size
  image    = var.image
  vpc_uuid = digitalocean_vpc.cluster.id
  ssh_keys = var.ssh_key_fingerprints
  tags     = [local.tag_node, local.tag_cp]
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    node_name          = each.key
    role               = "control-plane"
    cluster            = var.cluster_name
    voters_toml        = jsonencode(local.voters)
    seeds_toml         = jsonencode(["${digitalocean_droplet.cp0.ipv4_address_private}:${local.gossip_port}"])
    gossip_port        = local.gossip_port
    endpoint           = local.endpoint
    reserved_ip        = digitalocean_reserved_ip.api.ip_address
    cluster_key        = var.cluster_key
    control_key        = var.control_key
    control_public_key = var.control_public_key
    agent_do_token     = ""
    deb_url            = var.kubeha_deb_url
    deb_sha256         = var.kubeha_deb_sha256
  })
}

locals {
  cp_private = concat(
    [digitalocean_droplet.cp0.ipv4_address_private],
    [for n in local.cp_rest_names : digitalocean_droplet.cp[n].ipv4_address_private],
  )
}

resource "digitalocean_droplet" "lb" {
  count    = 2
  name     = "lb-${count.index}"
  region   = var.region
  size     = var.lb_size
  image    = var.image
  vpc_uuid = digitalocean_vpc.cluster.id
  ssh_keys = var.ssh_key_fingerprints
  tags     = [local.tag_node, local.tag_lb]
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    node_name          = "lb-${count.index}"
    role               = "lb"
    cluster            = var.cluster_name
    voters_toml        = jsonencode(local.voters)
    seeds_toml         = jsonencode([for ip in local.cp_private : "${ip}:${local.gossip_port}"])
    gossip_port        = local.gossip_port
    endpoint           = local.endpoint
    reserved_ip        = digitalocean_reserved_ip.api.ip_address
    cluster_key        = var.cluster_key
    control_key        = var.control_key
    control_public_key = var.control_public_key
    agent_do_token     = var.agent_do_token
    deb_url            = var.kubeha_deb_url
    deb_sha256         = var.kubeha_deb_sha256
  })
}

resource "digitalocean_droplet" "worker" {
  count    = var.worker_count
  name     = "worker-${count.index}"
  region   = var.region
  size     = var.worker_size
  image    = var.image
  vpc_uuid = digitalocean_vpc.cluster.id
  ssh_keys = var.ssh_key_fingerprints
  tags     = [local.tag_node]
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    node_name          = "worker-${count.index}"
    role               = "worker"
    cluster            = var.cluster_name
    voters_toml        = jsonencode(local.voters)
    seeds_toml         = jsonencode([for ip in local.cp_private : "${ip}:${local.gossip_port}"])
    gossip_port        = local.gossip_port
    endpoint           = local.endpoint
    reserved_ip        = digitalocean_reserved_ip.api.ip_address
    cluster_key        = var.cluster_key
    control_key        = ""
    control_public_key = var.control_public_key
    agent_do_token     = ""
    deb_url            = var.kubeha_deb_url
    deb_sha256         = var.kubeha_deb_sha256
  })
}

# Every kubeha droplet: SSH from var.ssh_cidrs only; inside the VPC the
# gossip/lease port, the planned join port, the apiserver and Kubernetes'
# own ports. Outbound: everything (apt, the DigitalOcean API).
resource "digitalocean_firewall" "nodes" {
  name = "kubeha-${var.cluster_name}-nodes"
  tags = [local.tag_node]

  inbound_rule {
    protocol         = "tcp"
    port_range       = "22"
    source_addresses = var.ssh_cidrs
  }
  # Gossip, VIP lease and bootstrap lock: sealed UDP datagrams.
  inbound_rule {
    protocol         = "udp"
    port_range       = "7946"
    source_addresses = [var.vpc_cidr]
  }
  # 7947/tcp: the planned join-secret TLS port (not used by the agent yet;
  # opened inside the VPC now so the example does not change later).
  inbound_rule {
    protocol         = "tcp"
    port_range       = "7947"
    source_addresses = [var.vpc_cidr]
  }
  # HAProxy -> apiservers, kubelets -> the endpoint.
  inbound_rule {
    protocol         = "tcp"
    port_range       = "6443"
    source_addresses = [var.vpc_cidr]
  }
  # kubelet API.
  inbound_rule {
    protocol         = "tcp"
    port_range       = "10250"
    source_addresses = [var.vpc_cidr]
  }
  # Pod network (flannel/Calico VXLAN); adjust to your CNI.
  inbound_rule {
    protocol         = "udp"
    port_range       = "4789"
    source_addresses = [var.vpc_cidr]
  }
  inbound_rule {
    protocol         = "udp"
    port_range       = "8472"
    source_addresses = [var.vpc_cidr]
  }

  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
  outbound_rule {
    protocol              = "icmp"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
}

# etcd between the control planes only.
resource "digitalocean_firewall" "control_planes" {
  name = "kubeha-${var.cluster_name}-cp"
  tags = [local.tag_cp]

  inbound_rule {
    protocol    = "tcp"
    port_range  = "2379-2380"
    source_tags = [local.tag_cp]
  }
}

# The Kubernetes API through the Reserved IP: its traffic arrives at the lb
# droplet's anchor address, where HAProxy listens. The only port open to the
# internet besides SSH from var.ssh_cidrs.
resource "digitalocean_firewall" "lb" {
  name = "kubeha-${var.cluster_name}-lb"
  tags = [local.tag_lb]

  inbound_rule {
    protocol         = "tcp"
    port_range       = "6443"
    source_addresses = ["0.0.0.0/0", "::/0"]
  }
}
