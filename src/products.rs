//! The product-id table of the My OPSWAT Public API documentation.

/// Name and platform of a licensed product id, from the API documentation's table.
/// Used when an answer lacks `product` or `platform`. `None` for ids the table does not
/// know (new products appear; they are allowed with a warning).
pub fn lookup(product_id: u32) -> Option<(&'static str, &'static str)> {
    Some(match product_id {
        1 => ("MetaDefender Core", "Linux"),
        2 => ("MetaDefender Core", "Windows"),
        3 => ("MetaDefender ICAP Server", ""),
        4 => ("MetaDefender Storage Security", ""),
        5 => ("MetaDefender Endpoint", "OPSWAT Central Management"),
        6 => ("MetaDefender Email Gateway Security", ""),
        7 => ("MetaDefender Managed File Transfer", ""),
        8 => ("MetaDefender Drive Toolkit", ""),
        9 => ("MetaDefender Kiosk", "Windows"),
        11 => ("MetaDefender NetWall", ""),
        13 => ("MetaDefender Kiosk", "Linux"),
        15 => ("MetaDefender Industrial Firewall & IPS", ""),
        16 => ("MetaDefender Aether", ""),
        17 => ("My OPSWAT Central Management", ""),
        18 => ("MetaDefender OT Security", ""),
        19 => ("MetaDefender Software Supply Chain", ""),
        20 => ("MetaDefender Industrial Firewall", ""),
        21 => ("My OPSWAT On-premises", ""),
        22 => ("MetaDefender OT Access On-premises", ""),
        _ => return None,
    })
}

/// Every id in the table, ascending.
pub const KNOWN_IDS: [u32; 19] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15, 16, 17, 18, 19, 20, 21, 22,
];

#[cfg(test)]
mod tests {
    #[test]
    fn table_is_complete() {
        for id in super::KNOWN_IDS {
            assert!(super::lookup(id).is_some(), "{id}");
        }
        assert!(super::lookup(10).is_none());
        assert!(super::lookup(23).is_none());
    }
}
